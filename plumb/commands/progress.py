"""How the CLI shows a pipeline's events, on a terminal or not.

``Progress`` is an EventSink and a context manager. On a terminal it draws a
live rich bar per stage (for training: loss, reward accuracy and margin) and
prints log lines above it. When stderr is not a terminal (CI logs, a pipe) it
prints plain lines instead: one when a stage starts, and one every
``PLUMB_PROGRESS_SECONDS`` (default 10) while a stage runs, so long work is
never silent.
"""

from __future__ import annotations

import os
import sys
import time

from rich.markup import escape

from plumb.core.records import Event
from plumb.core.text import printable


def _info(values: dict[str, float]) -> str:
    parts = []
    if "loss" in values:
        parts.append(f"loss {values['loss']:.4f}")
    if "rewards/accuracies" in values:
        parts.append(f"acc {values['rewards/accuracies']:.2f}")
    if "rewards/margins" in values:
        parts.append(f"margin {values['rewards/margins']:+.3f}")
    if "eval/rewards/accuracies" in values:
        parts.append(f"eval acc {values['eval/rewards/accuracies']:.2f}")
    return "  ".join(parts)


class Progress:
    def __init__(self, quiet: bool = False, live: bool | None = None) -> None:
        from rich.console import Console

        # soft_wrap: a line longer than the terminal (or than 80 columns in a log) is printed whole, never
        # broken in the middle of a path or a model spec
        self.console = Console(stderr=True, soft_wrap=True)
        self.quiet = quiet
        self.live = sys.stderr.isatty() if live is None else live
        self.every = float(os.environ.get("PLUMB_PROGRESS_SECONDS", 10))
        self.bar = None
        self.task = None
        self.stage = ""
        self.started = self.last_line = time.monotonic()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self._close_bar()

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def _open_bar(self, label: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as Bar

        self.bar = Bar(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=self.console)
        self.task = self.bar.add_task(label, total=None, info="")
        self.bar.start()

    def line(self, text: str) -> None:
        """A plain line on stderr (above the bar on a terminal); control characters escaped."""
        if not self.quiet:
            self.console.print(printable(text), highlight=False, markup=False)

    def __call__(self, event: Event) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if event.kind == "stage":
            self._close_bar()
            self.stage, self.started = event.stage or "", now
            self.console.print(f"[bold cyan]{escape(self.stage):>8}[/]  {escape(printable(event.message))}",
                               highlight=False)
            if self.live:
                self._open_bar(f"{'':>8}")
            self.last_line = now
        elif event.kind in ("progress", "metric"):
            info = _info(event.values) if event.kind == "metric" else event.message
            if self.bar is not None:
                self.bar.update(self.task, completed=event.step, total=event.total, info=info)
            elif not self.live and (now - self.last_line >= self.every or (event.total and event.step == event.total)):
                of = f"/{event.total}" if event.total else ""
                self.line(f"{self.stage or 'work'}: {event.step}{of} ({now - self.started:.0f}s) {info}".rstrip())
                self.last_line = now
        elif event.kind == "log" and event.message:
            if self.live:
                self.console.print(f"[dim]{escape(printable(event.message))}[/]", highlight=False)
            else:
                self.line(f"{self.stage or 'log'}: {event.message}")
        elif event.kind == "error" and event.message:
            self.line(f"{self.stage or 'error'}: {event.message}")
