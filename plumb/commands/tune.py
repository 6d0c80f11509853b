"""`plumb tune`: from a constitution to a tuned model, measured (pipeline.tune)."""

from __future__ import annotations

from pathlib import Path

import click

from plumb.pipeline.recipes import DEFAULT_METHOD, DEFAULT_ROUNDS, METHODS


@click.command()
@click.option("--constitution", "-c", help="A shipped constitution's name or your own TOML file "
                                           "(default: the workspace's; concise-writer for a new one).")
@click.option("--model", help="The model that samples and serves: llamacpp:PATH.gguf, starter, or servers that "
                              "load adapters, openai:URL[,URL...][#MODEL] (default: the workspace's generate model).")
@click.option("--train-model", help="The HF copy of --model the LoRA is trained on (default: the workspace's).")
@click.option("--judge", help="A stronger judge, e.g. anthropic:claude-... or llamacpp:big.gguf (default: --model, "
                              "audited against the checks first); 'none': no AI judge.")
@click.option("--critic", help="A stronger critic (default: --model, self-critique); 'none': no critique.")
@click.option("--method", type=click.Choice(METHODS), default=DEFAULT_METHOD, show_default=True,
              help="How to learn from the ranked answers (bench/RESULTS.md compares them).")
@click.option("--rounds", type=click.IntRange(1, 5),
              help=f"On-policy rounds: sample again with the adapter so far, rank, train on (default "
                   f"{DEFAULT_ROUNDS} for sft and dpo; grpo samples on-policy every step).")
@click.option("--prefixes/--no-prefixes", default=True, show_default=True,
              help="Rank each sampled answer cut after each of its sentences as a candidate too.")
@click.option("--anchor", type=click.FloatRange(0),
              help="sft: the weight of the KL to the base model on each answer's words, so the style moves and "
                   "what it says stays (default 0.3; 0: off).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="The workspace and report directory (default: -w's workspace, else ./tune; a rerun continues "
                   "where it stopped).")
@click.option("--budget-minutes", default=10.0, show_default=True, type=click.FloatRange(1),
              help="Wall-clock budget; what the other stages leave goes into training.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True, help="Print report.json.")
@click.pass_context
def tune(ctx, constitution, model, train_model, judge, critic, method, rounds, prefixes, anchor, out_dir,
         budget_minutes, seed, as_json) -> None:
    """Tune a model toward a constitution from answers it samples, ranked by the constitution, and measure it.

    \b
    Samples k answers per prompt, ranks them by the principles' graded code checks (an AI
    judge joins only after it agrees with the checks on this run), trains a LoRA on each
    prompt's best answer (by default; three on-policy rounds, each sampling from the
    adapter so far), keeps the checkpoint that does best on dev prompts while keeping the
    facts the base knows, exports it as a GGUF LoRA and compares base and tuned on held-out
    prompts and on a closed-book probe of those facts. Writes OUT/report.md, OUT/report.json and charts.
    """
    import json

    from plumb.commands.progress import Progress
    from plumb.pipeline.session import open_session
    from plumb.pipeline.tune import TuneOptions, tune as run

    directory = out_dir or (ctx.find_root().obj or {}).get("workspace") or "tune"
    opts = TuneOptions(constitution, model, train_model, judge, critic, method, rounds, budget_minutes, seed=seed,
                       prefixes=prefixes, anchor=anchor)
    with Progress(quiet=as_json) as show, \
            open_session(directory, create=True, constitution=constitution or "concise-writer") as session:
        out = run(session, opts, show)
    if as_json:
        click.echo(json.dumps(out.report, indent=2, default=str))
        return
    ev = out.report["eval"]
    base, tuned = ev["base"]["checks"].get("all", {}), ev["tuned"]["checks"].get("all", {})
    diff = out.report["eval"].get("difference", {})
    click.echo(f"checks passed on {ev['n']} held-out prompts: base {base.get('rate', 0):.0%} -> tuned "
               f"{tuned.get('rate', 0):.0%}" + (f" (difference {diff['diff']:+.0%}, 95% CI {diff['lo']:+.0%} to "
                                                 f"{diff['hi']:+.0%})" if diff else "")
               + f"; mean words {ev['base']['mean_words']} -> {ev['tuned']['mean_words']}; "
               f"distinct-2 {ev['base']['distinct2']:.2f} -> {ev['tuned']['distinct2']:.2f}")
    tax = out.report.get("probe")
    if tax and tax.get("often"):
        o = tax["often"]
        click.echo(f"facts (alignment-tax probe, closed-book): the tuned model answers the {o['n']} the base knew "
                   f"{o['ratio']:.2f}x as often (95% CI {o['lo']:.2f}-{o['hi']:.2f}; "
                   f"{'ok' if tax['ok'] else 'below ' + format(tax['threshold'], '.2f')})")
    if ev.get("win_rate"):
        w = ev["win_rate"]
        click.echo(f"judge prefers tuned: {w['rate']:.0%} (95% CI {w['lo']:.0%}-{w['hi']:.0%}, n {w['n']})")
    click.echo(f"report: {Path(directory) / 'report.md'}\n"
               f"chat with it: plumb -w {directory} generate --model \"{out.report['tuned_spec']}\" "
               "\"your question\"\n"
               f"or open it in the terminal UI: plumb tui {directory}")


def register(cli: click.Group) -> None:
    cli.add_command(tune)
