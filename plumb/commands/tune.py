"""`plumb tune`: from a constitution to a tuned model, measured (pipeline.tune)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--constitution", "-c", default="concise-writer", show_default=True,
              help="A shipped constitution's name or your own TOML file.")
@click.option("--model", default="starter", show_default=True,
              help="The GGUF that samples, critiques, judges and serves (llamacpp:PATH.gguf or starter).")
@click.option("--train-model", help="The HF copy of --model the LoRA is trained on (default: the starter's).")
@click.option("--judge", help="A stronger judge, e.g. anthropic:claude-... or llamacpp:big.gguf (default: --model); "
                             "'none': no AI judge, the checks decide (faster).")
@click.option("--critic", help="A stronger critic (default: --model, self-critique).")
@click.option("--pairs", type=click.Choice(["auto", "judge", "checks", "both"]), default="auto", show_default=True,
              help="Whose verdicts make training pairs; auto trusts the judge only where this run measured it "
                   "agreeing with the checks better than chance.")
@click.option("--out", "out_dir", default="tune", show_default=True, type=click.Path(file_okay=False),
              help="The workspace and report directory (a rerun continues where it stopped).")
@click.option("--budget-minutes", default=10.0, show_default=True, type=click.FloatRange(1),
              help="Trades data size for time: how many prompts are sampled, critiqued and judged.")
@click.option("--json", "as_json", is_flag=True, help="Print report.json.")
def tune(constitution, model, train_model, judge, critic, pairs, out_dir, budget_minutes, as_json) -> None:
    """Tune a model toward a constitution from data the model and the constitution make, and measure it.

    \b
    Samples answers, critiques and revises them against the principles, judges pairs
    (both orders) and checks them in code, trains a DPO LoRA, keeps the checkpoint
    that does best on dev prompts, exports it as a GGUF LoRA and compares base and
    tuned on held-out prompts. Writes OUT/report.md, OUT/report.json and charts.
    """
    import json

    from plumb.commands.progress import Progress
    from plumb.pipeline.tune import TuneOptions, run

    opts = TuneOptions(Path(out_dir), constitution, model, train_model, judge, critic, pairs, budget_minutes)
    with Progress(quiet=as_json) as show:
        out = run(opts, show)
    if as_json:
        click.echo(json.dumps(out.report, indent=2, default=str))
        return
    ev = out.report["eval"]
    base, tuned = ev["base"]["checks"].get("all", {}), ev["tuned"]["checks"].get("all", {})
    click.echo(f"checks passed on {ev['n']} held-out prompts: base {base.get('rate', 0):.0%} -> tuned "
               f"{tuned.get('rate', 0):.0%}; mean words {ev['base']['mean_words']} -> {ev['tuned']['mean_words']}; "
               f"distinct-2 {ev['base']['distinct2']:.2f} -> {ev['tuned']['distinct2']:.2f}")
    if ev.get("win_rate"):
        w = ev["win_rate"]
        click.echo(f"judge prefers tuned: {w['rate']:.0%} (95% CI {w['lo']:.0%}-{w['hi']:.0%}, n {w['n']})")
    click.echo(f"report: {Path(out_dir) / 'report.md'}\n"
               f"chat with it: plumb -w {out_dir} generate --model "
               f"llamacpp:{out.report['base_gguf']}+lora:{out.report['adapter_gguf']} \"your question\"\n"
               f"or open it in the terminal UI: plumb tui {out_dir}")


def register(cli: click.Group) -> None:
    cli.add_command(tune)
