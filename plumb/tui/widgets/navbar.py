"""The top line of every screen: each screen's key and title, the current one marked."""

from __future__ import annotations

from typing import Mapping, Protocol

from textual.widgets import Static


class Entry(Protocol):  # a row of plumb.tui.screens.SCREENS (the table is passed in: widgets sit below screens)
    key: str
    title: str


class NavBar(Static):
    def __init__(self, current: str, screens: Mapping[str, Entry]) -> None:
        parts = []
        for name, info in screens.items():
            label = f"{info.key} {info.title}"
            parts.append(f"[reverse b] {label} [/]" if name == current else f" {label} ")
        super().__init__(" ".join(parts))
