"""`plumb verify`: every applicable verifier's score for one completion of one task."""

from __future__ import annotations

from pathlib import Path

import click

from plumb.commands import echo_json
from plumb.core.errors import PlumbError
from plumb.core.text import printable


@click.command()
@click.option("--task", "task_path", required=True, type=click.Path(dir_okay=False),
              help="A JSON task: {prompt, tests?, answer?, schema?, meta?} (the `plumb data import` shape).")
@click.option("--completion", "completion_path", required=True, type=click.Path(dir_okay=False),
              help="A file holding the completion to score ('-' for stdin).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def verify(ctx: click.Context, task_path: str, completion_path: str, as_json: bool) -> None:
    """Score COMPLETION for TASK with every verifier that applies (builtins and plugins).

    A detail that quotes the completion shows its control characters escaped (--json keeps them)."""
    from plumb.commands import session_from
    from plumb.core.dataio import read_task
    from plumb.core.records import Completion
    from plumb.core.rewards import score

    task = read_task(task_path)
    if completion_path == "-":
        text = click.get_text_stream("stdin").read()
    else:
        try:
            text = Path(completion_path).read_bytes().decode("utf-8", "replace")
        except OSError as exc:
            raise PlumbError(f"{completion_path}: cannot read: {exc.strerror or exc}.", exit_code=2) from None
    with session_from(ctx, scratch_ok=True) as session:
        rewards = score(session.pm, [task], [Completion(text, "file", "file")])[0]
    if as_json:
        echo_json([{"verifier": r.name, "value": r.value, "status": r.status, "detail": r.detail,
                    "seconds": round(r.seconds, 4)} for r in rewards])
        return
    if not rewards:
        click.echo("no verifier applies to this task (give it tests, an answer, a schema or meta.regex).")
    for r in rewards:
        click.echo(printable(f"{r.name:<14} {r.value:6.3f}  {r.status:<7} {r.detail}"))


def register(cli: click.Group) -> None:
    cli.add_command(verify)
