"""A label and a one-line input side by side: the rows of the TUI's forms."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Input, Label


class FieldRow(Horizontal):
    def __init__(self, label: str, value: str = "", *, id: str, **input_args: Any) -> None:
        super().__init__(classes="field-row")
        self.label = label
        self.input = Input(value, id=id, compact=True, **input_args)

    def compose(self) -> ComposeResult:
        yield Label(self.label, classes="field-label")
        yield self.input
