"""The command palette (ctrl+p): an entry for every screen and every action a screen binds.

Entries come from ``plumb.tui.screens.SCREENS`` and each screen's ``BINDINGS``,
so a new key on a screen is in the palette without being listed twice.
Choosing an action opens its screen first, then runs it there.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Iterator

from textual.command import DiscoveryHit, Hit, Hits, Provider


class PlumbCommands(Provider):
    def _entries(self) -> Iterator[tuple[str, str, Callable[[], Any]]]:
        from plumb.tui.screens import SCREENS, screen_class

        app: Any = self.app
        for name, info in SCREENS.items():
            yield f"Open {info.title}", f"({info.key}) {info.help}", partial(app.action_open, name)
            for binding in screen_class(name).BINDINGS:
                yield (f"{info.title}: {binding.description}", f"({binding.key} on {info.title})",
                       partial(app.open_and_run, name, binding.action))

    async def discover(self) -> Hits:
        for text, help_text, command in self._entries():
            yield DiscoveryHit(text, command, text=text, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for text, help_text, command in self._entries():
            score = matcher.match(text)
            if score > 0:
                yield Hit(score, matcher.highlight(text), command, text=text, help=help_text)
