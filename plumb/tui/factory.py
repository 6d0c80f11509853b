"""One factory builds the app for ``plumb tui``, the tests and the snapshot tests.

Building the app is light: Textual and plumb's core only. torch,
transformers, peft and llama_cpp load inside the workers that need them.
"""

from __future__ import annotations

from pathlib import Path


def make_app(workspace: str | Path | None = None, screen: str = "home"):
    """The plumb TUI on ``workspace`` (default: $PLUMB_WORKSPACE, the cwd or a parent),
    opening on ``screen`` (a name in ``plumb.tui.screens.SCREENS``)."""
    from plumb.tui.app import PlumbApp

    return PlumbApp(Path(workspace) if workspace is not None else None, screen)
