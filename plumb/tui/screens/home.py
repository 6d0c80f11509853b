"""Home: the constitution in use, the models, what the workspace holds, and the next step.

The overview is read in a thread worker (the store may be large, resolving a
model spec touches the disk) and shown when it is back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.markup import escape
from textual.widgets import Markdown, RichLog, Static

from plumb.core.errors import PlumbError, ValidationFailed
from plumb.core.text import printable
from plumb.tui.screens.base import PlumbScreen

COUNTED = ("prompts", "samples", "critiques", "judgments", "pairs", "runs")


@dataclass
class Overview:
    constitution: str = ""
    problems: list[str] = field(default_factory=list)
    models: list[tuple[str, str, str]] = field(default_factory=list)  # (role, spec, state)
    adapters: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    next_step: str = ""


def _constitution(session: Any, view: Overview) -> None:
    try:
        const = session.constitution()
    except PlumbError as exc:  # ValidationFailed carries FILE:LINE: message lines
        view.constitution = session.ws.constitution_name
        view.problems = exc.problems if isinstance(exc, ValidationFailed) else [str(exc)]
        return
    checks = sum(len(p.checks) for p in const.principles)
    view.constitution = (f"{const.name} v{const.version}  hash {const.hash}  "
                         f"({len(const.principles)} principles, {checks} checks)")


def _models(session: Any, view: Overview) -> None:
    for role in ("generate", "train"):
        named = session.ws.model(role)
        try:
            spec = session.model(role, fetch=False)  # showing a model never downloads it
            view.models.append((role, named, f"ready: {spec}"))
        except PlumbError as exc:
            view.models.append((role, named, str(exc).splitlines()[0]))
    from plumb.pipeline.queries import recent_adapters

    rows = recent_adapters(session.store)
    view.adapters = [f"{r['path']}  ({r['kind']}, run {r['run_id']})" for r in rows]


def _next_step(view: Overview, store: Any) -> str:
    from plumb.pipeline.label import queue
    from plumb.pipeline.queries import any_run_done, latest_gguf_lora

    c = view.counts
    if view.problems:
        return "The constitution has errors: press 2 to see and fix them."
    if not c["prompts"]:
        return ("Import prompts or preference pairs: `plumb data import FILE.jsonl` "
                "(or run `plumb tune`: it brings its own prompts and does every step).")
    if not c["pairs"]:
        to_label = len(queue(store))
        if not to_label:
            return "Sample two answers per prompt: press 3 (or `plumb generate -n 2`)."
        return f"Choose the better answer of each of the {to_label} pairs: press 4."
    if not any_run_done(store):
        return f"Train an adapter on the {c['pairs']} pairs: press 5."
    if latest_gguf_lora(store) is None:
        return ("Export the adapter for llama.cpp: train again with `gguf` checked (press 5), or "
                "`plumb export gguf --adapter DIR --base hf:BASE --out adapter.gguf`.")
    return "Compare base and tuned: press 6 (blind A/B measures the tuned model's win rate)."


def overview(session: Any) -> Overview:
    """Everything Home shows, read from the workspace (pairs: the training pairs ``pipeline.pairs`` builds)."""
    from plumb.pipeline.stats import workspace_counts

    view = Overview()
    _constitution(session, view)
    _models(session, view)
    counts = workspace_counts(session.store)
    view.counts = {k: counts[k] for k in COUNTED}
    view.next_step = _next_step(view, session.store)
    return view


class HomeScreen(PlumbScreen):
    NAME = "home"
    BINDINGS = [Binding("ctrl+r", "reload", "Reload"), Binding("ctrl+t", "tune", "Tune"),
                Binding("ctrl+x", "stop_tune", "Stop tune")]
    tuning: Any = None  # the work session of a running `plumb tune`

    def compose_body(self) -> ComposeResult:
        yield Static(id="workspace", classes="section")
        yield Static("Loading the workspace...", id="constitution", classes="section")
        yield Static(id="models", classes="section")
        yield Static(id="counts", classes="section")
        yield Static(id="next", classes="section")
        yield Static("[b]Tune[/]  ctrl+t runs `plumb tune` on this workspace and its constitution: every stage, "
                     "live, then its report (ctrl+x stops it; ctrl+t again continues where it stopped).",
                     id="tune-status", classes="section")
        yield RichLog(id="tune-log", markup=True, wrap=True)
        yield Markdown(id="tune-report")

    def action_tune(self) -> None:
        if self.tuning is not None:
            self.notify("plumb tune is already running (ctrl+x stops it).")
            return
        self.tuning = self.app.work_session()
        log = self.query_one("#tune-log", RichLog)
        log.clear()
        log.display = True
        self.run_tune(self.tuning)

    def action_stop_tune(self) -> None:
        if self.tuning is not None:
            self.tuning.cancel.set()
            self.query_one("#tune-status", Static).update("[b]Tune[/]  stopping after the current step...")

    @work(thread=True, exclusive=True, group="tune", exit_on_error=False)
    def run_tune(self, session: Any) -> None:
        from plumb.pipeline.tune import TuneOptions, tune

        try:  # the workspace's constitution and models (plumb.toml), as `plumb -w DIR tune`
            done = tune(session, TuneOptions(), self.sink())
        except Exception as exc:  # PlumbError (too few pairs, a stop, a failed run) or a plugin's bug
            self.app.call_from_thread(self.tuned, None, exc)
        else:
            self.app.call_from_thread(self.tuned, done, None)

    def tuned(self, done: Any, error: BaseException | None) -> None:
        self.tuning = None
        status = self.query_one("#tune-status", Static)
        if error is not None:
            status.update(f"[b]Tune[/]  [red]stopped: {escape(str(error))}[/]")
            self.fail("plumb tune stopped", error)
        else:
            from pathlib import Path

            status.update(f"[b]Tune[/]  done: {escape(str(Path(done.directory) / 'report.md'))}")
            self.query_one("#tune-report", Markdown).update((Path(done.directory) / "report.md").read_text())
        self.load()

    @on(PlumbScreen.PipelineEvent)
    def progressed(self, message: PlumbScreen.PipelineEvent) -> None:
        event = message.event
        log = self.query_one("#tune-log", RichLog)
        if event.kind == "stage":
            log.write(f"[b cyan]{escape(event.stage or '')}[/] {escape(printable(event.message))}")
        elif event.kind in ("log", "error") and event.message:
            log.write(escape(printable(event.message)))
        elif event.kind in ("progress", "metric") and event.step is not None:
            of = f"/{event.total}" if event.total else ""
            loss = f"  loss {event.values['loss']:.4f}" if "loss" in event.values else ""
            self.query_one("#tune-status", Static).update(
                f"[b]Tune[/]  {escape(event.stage or 'train')}: {event.step}{of}{loss}")

    def refresh_data(self) -> None:
        self.query_one("#workspace", Static).update(f"[b]Workspace[/]  {escape(str(self.session.root))}")
        self.load()

    def action_reload(self) -> None:
        self.load()

    @work(thread=True, exclusive=True, group="home", exit_on_error=False)
    def load(self) -> None:
        try:
            view = overview(self.session)
        except Exception as exc:  # a broken store or plugin: say so, keep the app
            self.app.call_from_thread(self.fail, "could not read the workspace", exc)
            return
        self.app.call_from_thread(self.show, view)

    def show(self, view: Overview) -> None:
        text = f"[b]Constitution[/]  {escape(view.constitution)}"
        if view.problems:
            text += "\n" + "\n".join(f"  [red]{escape(p)}[/]" for p in view.problems[:5])
        self.query_one("#constitution", Static).update(text)
        lines = [f"  {role:<9} {escape(named)}  [dim]{escape(state)}[/]" for role, named, state in view.models]
        lines += [f"  adapter   {escape(a)}" for a in view.adapters] or ["  adapters  none yet"]
        self.query_one("#models", Static).update("[b]Models[/]\n" + "\n".join(lines))
        self.query_one("#counts", Static).update(
            "[b]Data[/]  " + "   ".join(f"{k} [b]{v}[/]" for k, v in view.counts.items()))
        self.query_one("#next", Static).update(f"[b]Next[/]  {escape(view.next_step)}")
