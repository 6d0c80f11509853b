"""Plugins: every plugin (where it came from, its hooks) and what it offers; failed ones with the reason."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import DataTable, Static

from plumb.tui.screens.base import PlumbScreen

KINDS = ("backends", "methods", "verifiers")


class PluginsScreen(PlumbScreen):
    NAME = "plugins"
    BINDINGS = []

    def compose_body(self) -> ComposeResult:
        yield Static("[b]Plugins[/]  loaded and failed (fix or uninstall a failed one; the rest keep working)")
        yield DataTable(id="plugins", cursor_type="row", zebra_stripes=True)
        yield Static("[b]What they offer[/]  backends (model specs), training methods, verifiers (checks)")
        yield DataTable(id="offered", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        self.query_one("#plugins", DataTable).add_columns("plugin", "source", "version", "hooks or failure")
        self.query_one("#offered", DataTable).add_columns("kind", "name", "plugin", "description")

    def refresh_data(self) -> None:
        pm = self.session.pm
        plugins = self.query_one("#plugins", DataTable)
        plugins.clear()
        for info in pm.describe():
            status = (Text(f"FAILED: {info.error}", style="red") if info.error
                      else Text(", ".join(info.hooks) or "(no hooks)"))
            plugins.add_row(Text(info.name), Text(info.source), Text(info.version), status)
        offered = self.query_one("#offered", DataTable)
        offered.clear()
        try:
            registry = pm.registry
        except Exception as exc:  # two plugins registering one name: the registry says which
            self.fail("plugins disagree", exc)
            return
        for kind in KINDS:
            for entry in getattr(registry, kind).values():
                offered.add_row(kind[:-1], Text(entry.name), Text(entry.plugin), Text(entry.description))
