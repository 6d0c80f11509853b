"""`plumb critique`: Constitutional AI self-critique and revision of sampled answers (pipeline.critique)."""

from __future__ import annotations

import click

from plumb.commands import echo_json, session_from


@click.command()
@click.option("--critic", help="Model spec of the critic (default: [models] generate: self-critique).")
@click.option("--rounds", default=2, show_default=True, type=click.IntRange(1), help="Critique-revision rounds.")
@click.option("--order", type=click.Choice(["weight", "turn"]), default="weight", show_default=True,
              help="A principle per round drawn by weight, or each principle in turn.")
@click.option("--split", default="train", show_default=True)
@click.option("--limit", type=click.IntRange(1), help="At most this many drafts.")
@click.option("--constitution", "-c", help="Constitution (default: the workspace's).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def critique(ctx: click.Context, critic, rounds, order, split, limit, constitution, as_json) -> None:
    """Critique each sampled answer against a principle and revise it, ROUNDS times.

    Every round is stored (draft, principle, critique, revision, critic, constitution
    hash). A revision that is empty, repeats its draft, talks about the critique or
    breaks a check its draft passed is flagged and never used as a chosen answer;
    `plumb judge` decides whether the others are better than their drafts.
    """
    from plumb.commands.progress import Progress
    from plumb.pipeline.critique import CritiqueOptions, critique as stage

    with session_from(ctx) as session, Progress(quiet=as_json) as show:
        out = stage(session, CritiqueOptions(critic, rounds, order, split, limit, constitution), show)
    if as_json:
        echo_json({"critic": out.critic, "drafts": out.drafts, "rounds": out.rounds, "usable": out.usable,
                   "flags": dict(out.flags), "already": out.already})
        return
    flags = ", ".join(f"{k} {v}" for k, v in out.flags.most_common()) or "none"
    click.echo(f"critiqued {out.drafts} drafts ({out.rounds} rounds) with {out.critic}; "
               f"{out.usable} final revisions usable; flagged: {flags}"
               + (f"; {out.already} drafts were already critiqued" if out.already else "") + ".")
    click.echo("Next: plumb judge   (decides, pair by pair, whether a revision beats its draft)")


def register(cli: click.Group) -> None:
    cli.add_command(critique)
