"""`plumb judge` (pipeline.judge) and `plumb judge agreement` (pipeline.agreement)."""

from __future__ import annotations

import click

from plumb.commands import echo_json, session_from


@click.group(invoke_without_command=True)
@click.option("--judge", "judge_spec", help="Model spec of the judge, or 'checks' (default: [models] generate).")
@click.option("--principle", help="Judge against one principle instead of the whole constitution.")
@click.option("--split", default="train", show_default=True)
@click.option("--limit", type=click.IntRange(1), help="At most this many pairs.")
@click.option("--constitution", "-c", help="Constitution (default: the workspace's).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def judge(ctx: click.Context, judge_spec, principle, split, limit, constitution, as_json) -> None:
    """Judge the workspace's pairs this judge has not judged yet, each in both orders.

    Pairs are two answers to the same prompt, or a draft and its final revision. A pair
    whose two orders disagree is inconsistent and no preference; a reply that names no
    verdict is stored raw and counted, never guessed.
    """
    if ctx.invoked_subcommand is not None:
        return
    from plumb.commands.progress import Progress
    from plumb.pipeline.judge import JudgeOptions, judge as stage

    with session_from(ctx) as session, Progress(quiet=as_json) as show:
        out = stage(session, JudgeOptions(judge_spec, principle, split, limit, constitution), show)
    if as_json:
        echo_json({"judge": out.judge, "pairs": out.pairs, "already": out.already, "identical": out.identical,
                   "outcomes": dict(out.outcomes)})
        return
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(out.outcomes.items())) or "nothing new"
    click.echo(f"judged {out.pairs} pairs with {out.judge}: {outcomes}"
               + (f"; {out.already} already judged" if out.already else "")
               + (f"; {out.identical} skipped (same text)" if out.identical else "") + ".")


@judge.command()
@click.option("--judge", "judge_spec", help="The model judge to measure (default: [models] generate).")
@click.option("--show", default=5, show_default=True, help="How many of the least certain pairs to list.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def agreement(ctx: click.Context, judge_spec, show, as_json) -> None:
    """How often the AI judge agrees with you and with the principles' checks."""
    from plumb.pipeline.agreement import agreement as measure

    with session_from(ctx) as session:
        spec = str(session.model("generate", judge_spec))
        out = measure(session, spec, show=show)
    if as_json:
        echo_json(out.to_dict())
        return
    click.echo(f"judge {out.judge}")
    for title, rates in (("agrees with you", out.with_person), ("agrees with the checks", out.with_checks)):
        click.echo(f"  {title}:" + ("" if rates else " no pairs to compare yet"))
        for key, rate in rates.items():
            click.echo(f"    {key:<28} {rate}")
    if out.least_certain:
        click.echo("  least certain pairs (label these first: plumb label):")
        for r in out.least_certain:
            why = "orders disagree" if r["consistent"] == 0 else f"p(A) {r['p_a']:.2f}" if r["p_a"] is not None else ""
            click.echo(f"    #{r['judgment_id']} {r['prompt'][:60]!r} ({why})")


def register(cli: click.Group) -> None:
    cli.add_command(judge)
