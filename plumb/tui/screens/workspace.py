"""No workspace where the TUI was pointed: say why, and offer to create one there."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Footer, Static

from plumb.core.errors import PlumbError


class WorkspaceScreen(ModalScreen[Any]):
    """Dismissed with the opened session once created, or None to quit."""

    BINDINGS = [Binding("y", "create", "Create it"), Binding("n,escape,q", "quit", "Quit")]

    def __init__(self, target: Path, reason: str) -> None:
        super().__init__()
        self.target = target.resolve()
        self.reason = reason

    @property
    def can_create(self) -> bool:
        from plumb.core.workspace import CONFIG

        return not (self.target / CONFIG).exists()

    def compose(self) -> ComposeResult:
        offer = (f"Create a workspace in {self.target}?  [b]y[/] create   [b]n[/] quit" if self.can_create
                 else "Fix the file named above, then start `plumb tui` again.  [b]q[/] quit")
        with Vertical(id="dialog"):
            yield Static("[b]No workspace open[/]", classes="title")
            yield Static(self.reason, id="reason", markup=False)
            yield Static(offer, id="offer")
        yield Footer()

    def action_create(self) -> None:
        from plumb.core.workspace import init_workspace
        from plumb.pipeline.session import open_session

        if not self.can_create:
            self.app.bell()
            return
        try:
            init_workspace(self.target)
            session = open_session(self.target)
        except PlumbError as exc:
            self.query_one("#reason", Static).update(str(exc))
            return
        self.app.notify(f"Created workspace {self.target}. Next: import prompts (`plumb data import FILE.jsonl`).")
        self.dismiss(session)

    def action_quit(self) -> None:
        self.dismiss(None)
