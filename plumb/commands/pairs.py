"""`plumb pairs build`: which judged pairs become training pairs, and what was dropped (pipeline.pairs)."""

from __future__ import annotations

import click

from plumb.commands import echo_json, workspace_from


@click.group()
def pairs() -> None:
    """Preference pairs from the workspace's judgments."""


@pairs.command()
@click.option("--by", type=click.Choice(["judge", "checks", "both"]), default="both", show_default=True,
              help="Whose verdicts count besides yours and imports: the AI judge, the code checks, or both "
                   "(the judge where the checks tie; pairs they decide opposite ways are dropped).")
@click.option("--split", default="train", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def build(ctx: click.Context, by: str, split: str, as_json: bool) -> None:
    """Count the pairs `plumb train` and `plumb data export` will use, and why others are dropped."""
    from collections import Counter

    from plumb.pipeline.pairs import build as build_pairs

    with workspace_from(ctx).store() as store:
        out = build_pairs(store, by, split)
    sources = Counter(p["source"] for p in out.pairs)
    if as_json:
        echo_json({"pairs": len(out.pairs), "verdicts": out.verdicts, "dropped": dict(out.dropped),
                   "sources": dict(sources)})
        return
    dropped = ", ".join(f"{k} {v}" for k, v in out.dropped.most_common()) or "none"
    click.echo(f"{len(out.pairs)} pairs from {out.verdicts} judged pairs (by {by}; from "
               + ", ".join(f"{k} {v}" for k, v in sources.items()) + f"); dropped: {dropped}.")
    click.echo("Use them: plumb train dpo   or   plumb data export --format dpo pairs.jsonl")


def register(cli: click.Group) -> None:
    cli.add_command(pairs)
