"""CLI command groups, one module per concern; each has ``register(cli)``."""

from __future__ import annotations

import json
from typing import Any

import click


def workspace_from(ctx: click.Context):
    """The workspace named by --workspace / $PLUMB_WORKSPACE, or found from the cwd."""
    from plumb.core.workspace import find_workspace

    return find_workspace((ctx.find_root().obj or {}).get("workspace"))


def session_from(ctx: click.Context, scratch_ok: bool = False):
    """The open workspace (pipeline.session) for --workspace / $PLUMB_WORKSPACE / the cwd;
    with ``scratch_ok``, a scratch session (nothing stored) where there is no workspace."""
    from plumb.core.errors import PlumbError
    from plumb.pipeline.session import open_session, scratch_session

    try:
        return open_session((ctx.find_root().obj or {}).get("workspace"))
    except PlumbError:
        if not scratch_ok:
            raise
        return scratch_session()


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))

