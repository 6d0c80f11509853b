"""`plumb data import|export|stats`."""

from __future__ import annotations

import click

from plumb.commands import echo_json, workspace_from


@click.group()
def data() -> None:
    """Import and export prompts, tasks and preference data (JSONL)."""


@data.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--split", type=click.Choice(["train", "eval"]), default="train", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def import_(ctx: click.Context, file: str, split: str, as_json: bool) -> None:
    """Import FILE (JSONL): prompts, chats, preference pairs or labelled completions.

    All or nothing: a file with any bad line imports nothing.
    """
    from plumb.core.dataio import import_file

    ws = workspace_from(ctx)
    with ws.store() as store:
        counts = import_file(store, file, split=split)
    if as_json:
        echo_json(counts)
    else:
        parts = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
        click.echo(f"Imported {file}: {parts} (split {split}).")


@data.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["dpo", "sft", "kto"]), required=True)
@click.option("--by", type=click.Choice(["judge", "checks", "both"]), default="both", show_default=True,
              help="Whose verdicts make pairs besides a person's and imports (see `plumb pairs build`).")
@click.pass_context
def export(ctx: click.Context, file: str, fmt: str, by: str) -> None:
    """Write the workspace's data to FILE in TRL's conversational shapes (dpo rows carry the soft label p)."""
    from plumb.pipeline.pairs import export_file

    with workspace_from(ctx).store() as store:
        n = export_file(store, fmt, file, by)
    click.echo(f"Wrote {n} {fmt} rows to {file}.")


@data.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def stats(ctx: click.Context, as_json: bool) -> None:
    """Count the rows in the workspace (pairs: the training pairs `plumb train` uses by default)."""
    from plumb.pipeline.stats import workspace_counts

    with workspace_from(ctx).store() as store:
        counts = workspace_counts(store)
    if as_json:
        echo_json(counts)
    else:
        click.echo("  ".join(f"{k}: {v}" for k, v in counts.items()))


def register(cli: click.Group) -> None:
    cli.add_command(data)
