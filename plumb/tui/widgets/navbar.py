"""The top line of every screen: each screen's key and title, the current one marked."""

from __future__ import annotations

from textual.widgets import Static

from plumb.tui.screens import SCREENS


class NavBar(Static):
    def __init__(self, current: str) -> None:
        parts = []
        for name, info in SCREENS.items():
            label = f"{info.key} {info.title}"
            parts.append(f"[reverse b] {label} [/]" if name == current else f" {label} ")
        super().__init__(" ".join(parts))
