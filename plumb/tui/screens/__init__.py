"""The TUI's top-level screens, one per file, each opened by one key.

This table is the single list the app (its modes and key bindings), the nav
bar, the command palette and ``plumb tui --screen`` read. It imports nothing
from Textual, so the CLI can list the names without loading the UI.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any, NamedTuple


class ScreenInfo(NamedTuple):
    key: str  # the one-key binding that opens it
    title: str
    help: str


SCREENS: dict[str, ScreenInfo] = {
    "home": ScreenInfo("1", "Home", "the constitution, models, counts and the next step"),
    "constitution": ScreenInfo("2", "Constitution", "edit and validate the constitution"),
    "generate": ScreenInfo("3", "Generate", "sample answers, critique and revise them"),
    "label": ScreenInfo("4", "Label", "choose the better of two answers"),
    "train": ScreenInfo("5", "Train", "train a LoRA adapter with live charts"),
    "compare": ScreenInfo("6", "Compare", "base vs tuned: side by side, blind, or a chat"),
    "runs": ScreenInfo("7", "Runs", "past training runs and their metrics"),
    "plugins": ScreenInfo("8", "Plugins", "installed plugins and what they offer"),
}


def screen_class(name: str) -> Any:
    """The screen class for ``name`` (``plumb.tui.screens.NAME.NameScreen``), imported on first use."""
    module = import_module(f"plumb.tui.screens.{name}")
    return getattr(module, f"{name.capitalize()}Screen")
