"""The plumb App: one mode per top-level screen, the keys that open them, the open session.

Screens reach the workspace through ``app.session`` (a ``pipeline.Session``).
Long work gets its own ``work_session()``: the same store and plugins with a
cancel flag of its own, so stopping a sampling job never stops a training run.
The app opens the workspace in a worker once its first frame is up; when
there is none, it offers to create one instead of failing.
"""

from __future__ import annotations

import os
import random
from functools import partial
from pathlib import Path
from typing import Any

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.widgets import Static

from plumb.core.errors import PlumbError
from plumb.tui.commands import PlumbCommands
from plumb.tui.screens import SCREENS, screen_class


def _new_screen(name: str) -> Any:
    return screen_class(name)()


class PlumbApp(App[None]):
    CSS_PATH = "plumb.tcss"
    TITLE = "plumb"
    COMMANDS = App.COMMANDS | {PlumbCommands}
    MODES = {name: partial(_new_screen, name) for name in SCREENS}
    BINDINGS = [Binding(info.key, f"open('{name}')", info.title, show=False) for name, info in SCREENS.items()]

    def __init__(self, workspace: Path | None = None, screen: str = "home") -> None:
        super().__init__()
        if screen not in SCREENS:
            raise PlumbError(f"no screen {screen!r}; the screens are: {', '.join(SCREENS)}.", exit_code=2)
        self.workspace = workspace
        self.start_screen = screen
        self.session: Any = None  # plumb.pipeline.session.Session, once the workspace is open
        self.rng = random.Random()  # display order of answer pairs; tests seed it
        self._work: list[Any] = []

    def compose(self) -> ComposeResult:
        yield Static(f"Opening {self.workspace or 'the workspace'}...", id="opening")

    def on_mount(self) -> None:
        self.open_workspace()

    @work(thread=True, exit_on_error=False)
    def open_workspace(self) -> None:
        """Open the workspace off the UI thread (plugins load), so the first frame does not wait for it."""
        from plumb.pipeline.session import open_session

        try:
            session = open_session(self.workspace)
        except PlumbError as exc:
            self.call_from_thread(self._no_workspace, str(exc))
            return
        except Exception as exc:  # a damaged plumb.db, a broken plugin under PLUMB_STRICT_PLUGINS
            self.call_from_thread(self._no_workspace, f"cannot open the workspace: {type(exc).__name__}: {exc}")
            return
        self.call_from_thread(self._workspace_created, session)

    def _no_workspace(self, reason: str) -> None:
        from plumb.tui.screens.workspace import WorkspaceScreen

        target = self.workspace or Path(os.environ.get("PLUMB_WORKSPACE") or Path.cwd())
        self.push_screen(WorkspaceScreen(target, reason), self._workspace_created)

    def _workspace_created(self, session: Any) -> None:
        if session is None:
            self.exit()
            return
        self.session = session
        self._opened()

    def _opened(self) -> None:
        failed = self.session.pm.failures
        if failed:
            names = ", ".join(f.name for f in failed)
            self.notify(f"plugins that failed to load: {names}. Press 8 for the reasons.", severity="warning")
        self.switch_mode(self.start_screen)

    def action_open(self, name: str) -> None:
        """Show the screen ``name`` (each keeps its state while another is shown)."""
        if self.session is None:
            self.bell()
            return
        self.switch_mode(name)

    async def open_and_run(self, name: str, action: str) -> None:
        """Show screen ``name`` and run one of its actions (the command palette's entries)."""
        if self.session is None:
            self.bell()
            return
        await self.switch_mode(name)
        await self.run_action(action, self.screen)

    def work_session(self) -> Any:
        """A session for one piece of long work: the app's store and plugins, its own cancel flag."""
        from plumb.pipeline.session import Session

        session = Session(self.session.ws, self.session.store, self.session.pm)
        self._work = [s for s in self._work if not s.cancel.is_set()] + [session]
        return session

    def reload_workspace(self) -> None:
        """Read plumb.toml again (after the constitution screen points it at another file)."""
        from plumb.core.workspace import open_workspace
        from plumb.pipeline.session import Session

        self.session = Session(open_workspace(self.session.root), self.session.store, self.session.pm)

    def on_unmount(self) -> None:
        """Stop running work on exit: a training child is told to stop and its run is marked interrupted."""
        for session in self._work:
            session.cancel.set()
