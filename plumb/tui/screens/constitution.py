"""Constitution: the TOML in an editor, validated as you type, its principles and checks, save.

Problems are the CLI's ``FILE:LINE: message`` lines (``parse_constitution``,
plus checks naming a verifier no plugin offers); choosing one moves the cursor
to its line. A shipped constitution is never overwritten: saving it writes
``WORKSPACE/NAME.toml`` and points plumb.toml at that copy. The side panel
also says which stored rows were made under another constitution hash.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.markup import escape
from textual.widgets import OptionList, Select, Static, TextArea

from plumb.core.errors import PlumbError, ValidationFailed
from plumb.core.workspace import set_config
from plumb.tui.screens.base import PlumbScreen

LINE = re.compile(r":(\d+): ")


def validate(text: str, filename: str, pm: Any) -> tuple[Any, list[str]]:
    """(constitution or None, problems as FILE:LINE: message), checks resolved against the plugins."""
    from plumb.core.constitution import parse_constitution

    try:
        const = parse_constitution(text, filename)
    except ValidationFailed as exc:
        return None, list(exc.problems)
    problems = []
    try:
        registry = pm.registry
    except PlumbError as exc:  # two plugins registering one name: no check can be resolved
        return None, [f"{filename}:1: {exc}"]
    for p in const.principles:
        for check in p.checks:
            try:
                registry.check_verifier(check.verifier)
            except PlumbError as exc:
                m = re.search(rf"verifier\s*=\s*[\"']{re.escape(check.verifier)}[\"']", text)
                line = text.count("\n", 0, m.start()) + 1 if m else 1
                problems.append(f"{filename}:{line}: principle {p.id!r}: {exc}")
    return (None if problems else const), problems


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class ConstitutionScreen(PlumbScreen):
    NAME = "constitution"
    MIN_WIDTH = 70
    BINDINGS = [Binding("ctrl+s", "save", "Save"), Binding("ctrl+o", "reload", "Reload the file")]

    def __init__(self) -> None:
        super().__init__()
        self.path: Path | None = None
        self.valid: Any = None
        self._pending: Any = None  # the debounce timer of validation as you type

    def compose_body(self) -> ComposeResult:
        from plumb.core.constitution import shipped

        with Horizontal():
            with VerticalScroll(id="const-side"):
                yield Select([(name, name) for name in shipped()], prompt="Start from a shipped constitution",
                             id="shipped", compact=True)
                yield Static(id="principles")
                yield Static(id="stale")
            with Vertical(id="const-main"):
                yield Static(id="file", classes="status")
                language = "toml" if importlib.util.find_spec("tree_sitter_toml") else None
                yield TextArea.code_editor("", language=language, id="toml")
                yield Static(id="verdict", classes="status")
                yield OptionList(id="problems")

    @property
    def filename(self) -> str:
        root = self.session.root
        return str(self.path.relative_to(root)) if self.path.is_relative_to(root) else str(self.path)

    @property
    def shipped(self) -> bool:
        from plumb.core.constitution import shipped_dir

        return self.path.resolve().is_relative_to(shipped_dir().resolve())

    @property
    def save_path(self) -> Path:
        return self.session.root / f"{self.path.stem}.toml" if self.shipped else self.path

    def refresh_data(self) -> None:
        if self.path is None:
            self.action_reload()
        self.load_stale()

    def action_reload(self) -> None:
        """Load the workspace's constitution file into the editor (edits not saved are dropped)."""
        from plumb.core.constitution import resolve

        try:
            self.path = resolve(self.session.ws.constitution_name, self.session.root)
            text = self.path.read_text(encoding="utf-8")
        except (PlumbError, OSError, ValueError) as exc:  # ValueError: not UTF-8 text
            self.fail("cannot open the constitution", exc)
            return
        self.query_one("#toml", TextArea).load_text(text)
        note = f"  (shipped: ctrl+s saves a copy as {self.save_path})" if self.shipped else ""
        self.query_one("#file", Static).update(f"[b]{escape(self.filename)}[/]{escape(note)}")
        self.check()

    @on(Select.Changed, "#shipped")
    def start_from(self, event: Select.Changed) -> None:
        from plumb.core.constitution import shipped

        if event.value is Select.NULL:
            return
        self.query_one("#toml", TextArea).load_text(shipped()[str(event.value)].read_text(encoding="utf-8"))
        self.notify(f"Loaded {event.value}; ctrl+s saves it as {self.save_path}.", markup=False)

    @on(TextArea.Changed, "#toml")
    def edited(self) -> None:
        if self._pending is not None:
            self._pending.stop()
        self._pending = self.set_timer(0.25, self.check)

    def check(self) -> None:
        """Validate the editor's text; show the problems or the principles."""
        if self.path is None:
            return
        text = self.query_one("#toml", TextArea).text
        const, problems = validate(text, self.filename, self.session.pm)
        self.valid = const
        listing = self.query_one("#problems", OptionList)
        if problems != [str(o.prompt) for o in listing.options]:  # unchanged: keep the highlight
            listing.clear_options()
            listing.add_options(problems)
        listing.display = bool(problems)
        verdict = (f"[green]ok[/]: {escape(const.summary())}" if const else
                   f"[red]{len(problems)} problem(s)[/]; enter on one jumps to its line")
        self.query_one("#verdict", Static).update(verdict)
        if const is not None:
            self.query_one("#principles", Static).update(_principles(const))
            self.load_stale()

    @on(OptionList.OptionSelected, "#problems")
    def jump(self, event: OptionList.OptionSelected) -> None:
        m = LINE.search(str(event.option.prompt))
        editor = self.query_one("#toml", TextArea)
        if m:
            editor.cursor_location = (int(m.group(1)) - 1, 0)
        editor.focus()

    def action_save(self) -> None:
        if self.path is None:
            return
        target = self.save_path
        try:
            _write(target, self.query_one("#toml", TextArea).text)
            if target != self.path:
                set_config(self.session.root, {"constitution": target.name})
            self.app.reload_workspace()
        except (OSError, PlumbError) as exc:
            self.fail(f"could not save {target}", exc)
            return
        self.path = target
        self.query_one("#file", Static).update(f"[b]{escape(self.filename)}[/]")
        if self.valid is None:
            self.notify(f"Saved {target} with problems: plumb commands refuse it until they are fixed.",
                        severity="warning", markup=False)
        else:
            self.notify(f"Saved {target} (hash {self.valid.hash}).", markup=False)
        self.check()

    @work(thread=True, exclusive=True, group="stale", exit_on_error=False)
    def load_stale(self) -> None:
        from plumb.pipeline.queries import stale_rows

        current = self.valid.hash if self.valid is not None else ""
        try:
            lines = stale_rows(self.session.store, current)
        except Exception as exc:  # a damaged store: say so, keep the editor
            self.app.call_from_thread(self.fail, "could not read the store", exc)
            return
        text = ("[b]Made under other constitutions[/]\n" + "\n".join(escape(x) for x in lines) if lines
                else "[dim]Every stored row was made under this constitution (or none yet).[/]")
        self.app.call_from_thread(self.query_one("#stale", Static).update, text)


def _principles(const: Any) -> str:
    out = [f"[b]{escape(const.name)}[/] v{escape(const.version)}  hash {const.hash}"]
    for p in const.principles:
        out.append(f"\n[b]{escape(p.id)}[/] (weight {p.weight:g})\n  {escape(p.text)}")
        for c in p.checks:
            params = ", ".join(f"{k}={v}" for k, v in c.params.items())
            out.append(f"  [cyan]check[/] {escape(c.verifier)}({escape(params)})")
    return "\n".join(out)
