"""`plumb init` and `plumb plugins`."""

from __future__ import annotations

from dataclasses import asdict

import click

from plumb.commands import echo_json, workspace_from


@click.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False))
@click.option("--constitution", "-c", default="concise-writer", show_default=True,
              help="Default constitution: a shipped name or a path.")
def init(directory: str, constitution: str) -> None:
    """Create a workspace: plumb.toml, plumb.db, adapters/, models/."""
    from plumb.core.workspace import init_workspace

    ws = init_workspace(directory, constitution=constitution)
    with ws.store() as store:
        version = store.schema_version
    click.echo(f"Created workspace {ws.root} (schema version {version}).")
    click.echo(f"Next: cd {directory} && plumb data import FILE.jsonl")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def plugins(ctx: click.Context, as_json: bool) -> None:
    """List installed plugins, where they come from and the hooks they implement."""
    from plumb.core.errors import PlumbError
    from plumb.core.plugins import get_plugin_manager

    try:
        pm = workspace_from(ctx).plugin_manager()
    except PlumbError:  # outside a workspace: builtins and entry points only
        pm = get_plugin_manager()
    infos = pm.describe()
    reg = pm.registry
    offered = {kind: list(getattr(reg, kind).values()) for kind in ("backends", "methods", "verifiers")}
    if as_json:
        echo_json({"plugins": [asdict(i) for i in infos],
                   **{k: [{"name": e.name, "description": e.description, "plugin": e.plugin} for e in v]
                      for k, v in offered.items()}})
        return
    for info in infos:
        status = f"FAILED: {info.error}" if info.error else ", ".join(info.hooks) or "(no hooks)"
        click.echo(f"{info.name}  [{info.source} {info.version}]\n    {status}")
        for kind, entries in offered.items():
            mine = [e.name for e in entries if e.plugin == info.name]
            if mine:
                click.echo(f"    {kind}: {', '.join(mine)}")


def register(cli: click.Group) -> None:
    cli.add_command(init)
    cli.add_command(plugins)
