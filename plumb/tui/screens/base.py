"""What every top-level screen shares: the nav bar, the body, the footer, a message when too small.

A screen subclasses ``PlumbScreen``, names itself (``NAME``, a key of
``SCREENS``), yields its widgets from ``compose_body`` and reloads what it
shows in ``refresh_data`` (called each time the screen is shown). A terminal
smaller than ``MIN_WIDTH`` x ``MIN_HEIGHT`` gets a message saying so instead
of a squashed body. No field has the focus when a screen opens, so digits
open screens; tab enters the fields and esc leaves them. ``sink()`` hands a
worker thread an event sink whose events arrive as ``PipelineEvent`` messages.
"""

from __future__ import annotations

from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.events import Resize
from textual.geometry import Size
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Input, Static, TextArea

from plumb.core.records import Event, EventSink
from plumb.tui.screens import SCREENS
from plumb.tui.widgets.navbar import NavBar


class PlumbScreen(Screen[None]):
    NAME: ClassVar[str] = ""
    MIN_WIDTH: ClassVar[int] = 60
    MIN_HEIGHT: ClassVar[int] = 14
    AUTO_FOCUS = ""  # no field has focus at first, so the keys 1-8 open screens; tab enters the fields
    BINDINGS = [Binding("escape", "leave_field", "Leave the field")]

    class PipelineEvent(Message):
        """A pipeline event (stage, progress, metric, log, done, error) from a worker thread."""

        def __init__(self, event: Event) -> None:
            super().__init__()
            self.event = event

    def compose(self) -> ComposeResult:
        yield NavBar(self.NAME, SCREENS)
        yield Static(id="too-small")
        with Vertical(id="body"):
            yield from self.compose_body()
        yield Footer()

    def compose_body(self) -> ComposeResult:
        yield from ()

    @property
    def session(self) -> Any:  # plumb.pipeline.session.Session
        return self.app.session

    def refresh_data(self) -> None:
        """Reload what the screen shows from the workspace."""

    def on_screen_resume(self) -> None:
        self._fit(self.app.size)
        self.refresh_data()

    def on_resize(self, event: Resize) -> None:
        self._fit(event.size)

    def _fit(self, size: Size) -> None:
        small = size.width < self.MIN_WIDTH or size.height < self.MIN_HEIGHT
        self.set_class(small, "-too-small")
        if small:
            self.query_one("#too-small", Static).update(
                f"The {SCREENS[self.NAME].title} screen needs a terminal of at least {self.MIN_WIDTH}x"
                f"{self.MIN_HEIGHT}; this one is {size.width}x{size.height}. Make the window larger "
                "(every action is also a `plumb` command).")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """esc (leave the field) is offered only while a text field has the focus."""
        if action == "leave_field":
            return isinstance(self.focused, (Input, TextArea))  # False: hidden from the footer
        return True

    def action_leave_field(self) -> None:
        self.set_focus(None)

    def sink(self) -> EventSink:
        """An event sink for a worker thread: each event arrives on this screen as a ``PipelineEvent``."""
        return lambda event: self.post_message(self.PipelineEvent(event))

    def fail(self, what: str, exc: BaseException | str) -> None:
        """Show an error as a notification that stays long enough to read."""
        self.app.notify(f"{what}: {exc}", severity="error", timeout=12, markup=False)


def number(text: str, kind: type, low: float, what: str) -> Any:
    """``text`` as an int or float of at least ``low``; ValueError naming ``what`` otherwise."""
    try:
        value = kind(text.strip())
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not {'a whole number' if kind is int else 'a number'}") from None
    if value < low:
        raise ValueError(f"{what}: must be at least {low}, got {value}")
    return value
