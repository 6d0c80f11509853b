"""The `plumb` command line: every action, scriptable, with --json where it lists.

Each command group lives in its own module under ``plumb/commands/``; this
file assembles them and turns errors into one-paragraph messages. Heavy
libraries (torch, transformers, peft, llama_cpp) are imported only inside the
commands that need them, so ``plumb --help`` stays fast.
"""

from __future__ import annotations

import os
import sys
import warnings

import click

from plumb import __version__
from plumb.core.errors import PlumbError, ValidationFailed


class PlumbGroup(click.Group):
    """A click group that prints PlumbErrors as messages, never tracebacks."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ValidationFailed as exc:
            for line in exc.problems:
                click.echo(line, err=True)
            if str(exc) != "\n".join(exc.problems):
                click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except PlumbError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=PlumbGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="plumb")
@click.option("-w", "--workspace", type=click.Path(file_okay=False), envvar="PLUMB_WORKSPACE",
              help="Workspace directory (default: the current directory or a parent holding plumb.toml).")
@click.pass_context
def cli(ctx: click.Context, workspace: str | None) -> None:
    """plumb: write your own constitution and tune a local model toward it.

    \b
    Start:   plumb init my-ws && cd my-ws
    Check:   plumb constitution check constitutions/concise-writer.toml
    Data:    plumb data import pairs.jsonl
    """
    ctx.obj = {"workspace": workspace}


def _register() -> None:
    from plumb.commands import constitution, data, models, workspace
    from plumb.commands import critique, export, generate, judge, label, pairs
    from plumb.commands import serve, train, tui, tune, verify

    for module in (workspace, constitution, data, models, generate, critique, judge, label, pairs, export,
                   tune, train, serve, verify, tui):
        module.register(cli)


_register()


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    click.echo(f"warning: {message}", err=True)


def main() -> None:
    warnings.showwarning = _show_warning
    try:
        cli(prog_name="plumb")
    except KeyboardInterrupt:
        click.echo("interrupted; everything already written is kept.", err=True)
        sys.exit(130)
    except Exception as exc:  # a bug or a plugin that raised: one paragraph, traceback on request
        if os.environ.get("PLUMB_DEBUG"):
            raise
        import traceback

        frame = traceback.extract_tb(exc.__traceback__)[-1]
        click.echo(
            f"error: unexpected {type(exc).__name__}: {exc} (raised at {frame.filename}:{frame.lineno}). "
            "This is a bug in plumb or in the plugin that file belongs to; run again with PLUMB_DEBUG=1 "
            "to see the traceback, and report it or disable the plugin in plumb.toml.",
            err=True,
        )
        sys.exit(1)
