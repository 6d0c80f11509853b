"""CLI command groups, one module per concern; each has ``register(cli)``."""

from __future__ import annotations

import json
from typing import Any

import click


def workspace_from(ctx: click.Context):
    """The workspace named by --workspace / $PLUMB_WORKSPACE, or found from the cwd."""
    from plumb.core.workspace import find_workspace

    return find_workspace((ctx.find_root().obj or {}).get("workspace"))


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def quiet_transformers() -> None:
    """plumb draws its own progress; hide transformers' per-load bars (imports transformers)."""
    from transformers.utils import logging

    logging.disable_progress_bar()
