"""`plumb tui [WORKSPACE] [--screen NAME]`: the terminal UI (plumb.tui), on the same pipeline as the CLI."""

from __future__ import annotations

import click

from plumb.tui.screens import SCREENS


@click.command()
@click.argument("workspace", required=False, type=click.Path(file_okay=False))
@click.option("--screen", type=click.Choice(list(SCREENS)), default="home", show_default=True,
              help="The screen to open on.")
@click.pass_context
def tui(ctx: click.Context, workspace: str | None, screen: str) -> None:
    """Open the terminal UI on WORKSPACE (default: -w, $PLUMB_WORKSPACE, the cwd or a parent).

    \b
    Keys: 1 home  2 constitution  3 generate  4 label  5 train  6 compare  7 runs  8 plugins
          ctrl+p every action by name   ctrl+q quit
    A directory that is not a workspace yet is offered to be created.
    """
    from plumb.tui.factory import make_app

    make_app(workspace or (ctx.find_root().obj or {}).get("workspace"), screen).run()


def register(cli: click.Group) -> None:
    cli.add_command(tui)
