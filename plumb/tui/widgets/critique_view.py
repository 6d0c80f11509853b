"""Critiqued drafts: a list of them above the highlighted one's draft, critique and revision side by side.

Each item is a draft with the latest round of its critique chain (round k
critiques round k-1's revision). A flagged revision — empty, a copy of what it
revises, talk about the critique, a broken check — is marked with its flags:
the pipeline never uses it as a chosen answer. Control characters in the texts are shown
escaped (``plumb.core.text.printable``).
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from plumb.core.text import printable

PANES = ("draft", "critique", "revision")


@dataclass
class CritiqueItem:
    draft_id: int
    prompt: str
    draft: str
    round: int  # the latest round
    principle: str
    critique: str
    revision: str
    flags: tuple[str, ...]  # empty: the revision is usable
    critic: str


def _line(text: str, width: int) -> str:
    one = " ".join(printable(text).split())
    return one if len(one) <= width else one[:width - 1] + "…"


class CritiqueView(Vertical):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.items: list[CritiqueItem] = []

    def compose(self) -> ComposeResult:
        yield OptionList(id="crit-items", compact=True)
        with Horizontal(id="crit-panes"):
            for pane in PANES:
                with VerticalScroll(classes="crit-pane", id=f"crit-pane-{pane}"):
                    yield Static(classes="crit-title", id=f"crit-title-{pane}")
                    yield Static(id=f"crit-{pane}", markup=False)

    def show_items(self, items: list[CritiqueItem]) -> None:
        """List ``items`` (the first one shown); the view is hidden when there are none."""
        self.items = items
        self.display = bool(items)
        listing = self.query_one("#crit-items", OptionList)
        listing.clear_options()
        for item in items:
            label = Text(f"{_line(item.prompt, 30)}  {_line(item.draft, 40)}")
            if item.flags:
                label.append(f"  flagged: {', '.join(item.flags)}", style="yellow")
            listing.add_option(Option(label, id=str(item.draft_id)))
        if items:
            listing.highlighted = 0
            self.show(items[0])

    @on(OptionList.OptionHighlighted, "#crit-items")
    def _highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if event.option_index < len(self.items):
            self.show(self.items[event.option_index])

    def show(self, item: CritiqueItem) -> None:
        flagged = Text(f"flagged: {', '.join(item.flags)} (never a chosen answer)", style="bold yellow")
        titles = {"draft": Text(f"draft: {_line(item.prompt, 60)}", style="bold"),
                  "critique": Text(f"critique, round {item.round}" + (f" (of revision {item.round - 1})"
                                                                      if item.round > 1 else "")
                                   + f": {printable(item.principle)}, by {printable(item.critic)}", style="bold"),
                  "revision": Text.assemble((f"revision, round {item.round}\n", "bold"),
                                            flagged if item.flags else ("usable", "green"))}
        texts = {"draft": item.draft, "critique": item.critique, "revision": item.revision}
        for pane in PANES:
            self.query_one(f"#crit-title-{pane}", Static).update(titles[pane])
            self.query_one(f"#crit-{pane}", Static).update(printable(texts[pane]))
            self.query_one(f"#crit-pane-{pane}", VerticalScroll).scroll_home(animate=False)

    @property
    def shown(self) -> dict[str, str]:
        """What the panes show now, as plain text: {draft, critique, revision, and each pane's title}."""
        out = {pane: str(self.query_one(f"#crit-{pane}", Static).content) for pane in PANES}
        out.update({f"{pane} title": str(self.query_one(f"#crit-title-{pane}", Static).content) for pane in PANES})
        return out
