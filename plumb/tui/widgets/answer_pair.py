"""A prompt above two answers side by side, each under its own title (A/B, or base/tuned).

Control characters in the texts are shown escaped (``plumb.core.text.printable``)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Static

from plumb.core.text import printable


class AnswerPair(Vertical):
    def compose(self) -> ComposeResult:
        yield Static(id="prompt", markup=False)
        with Horizontal(id="answers"):
            for side in ("left", "right"):
                with VerticalScroll(classes="answer", id=f"pane-{side}"):
                    yield Static(classes="answer-title", id=f"title-{side}", markup=False)
                    yield Static(id=f"answer-{side}", markup=False)

    def show(self, prompt: str, left: str, right: str, titles: tuple[str, str] = ("A", "B")) -> None:
        self.query_one("#prompt", Static).update(printable(prompt))
        for side, text, title in (("left", left, titles[0]), ("right", right, titles[1])):
            self.query_one(f"#title-{side}", Static).update(printable(title))
            self.query_one(f"#answer-{side}", Static).update(printable(text))
            self.query_one(f"#pane-{side}", VerticalScroll).scroll_home(animate=False)

    @property
    def texts(self) -> tuple[str, str]:
        """The answers shown (left, right), as plain text."""
        left, right = (str(self.query_one(f"#answer-{side}", Static).content) for side in ("left", "right"))
        return left, right
