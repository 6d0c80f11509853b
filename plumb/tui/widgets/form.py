"""A scrolling column of fields that is not a tab stop itself: tab goes straight to the first field."""

from __future__ import annotations

from textual.containers import VerticalScroll


class Form(VerticalScroll, can_focus=False):
    pass
