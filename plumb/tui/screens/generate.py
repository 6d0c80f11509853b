"""Generate: sample answers to the workspace's prompts (or new ones), then critique and revise them.

ctrl+r runs the pipeline's sample stage, ctrl+g its critique stage (the
model field is the critic: self-critique by default) over the chosen split's
stored answers. Either runs in a thread worker with its own cancel flag
(ctrl+t stops it; what is finished is kept); its events move the progress
bar. A rerun with the same settings only does what is missing. Each
critiqued draft of the split is listed with the latest round of its
critique: draft, critique and revision side by side, a flagged revision
marked with its flags.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.markup import escape
from textual.widgets import Button, Checkbox, Input, Label, ProgressBar, RichLog, Select, Static, TextArea

from plumb.core.errors import PlumbError
from plumb.core.text import printable
from plumb.tui.screens.base import PlumbScreen, number
from plumb.tui.widgets.critique_view import CritiqueItem, CritiqueView
from plumb.tui.widgets.field_row import FieldRow
from plumb.tui.widgets.form import Form


def latest_rounds(store: Any, split: str) -> list[CritiqueItem]:
    """Every critiqued draft of ``split`` with the latest round of its chain (draft -> revision 1 -> ...;
    the newest critique of an answer continues its chain, as the judge stage reads it)."""
    from plumb.core.records import Chat
    from plumb.pipeline.queries import drafts, revisions

    child = {r["sample_id"]: r for r in revisions(store)}
    items = []
    for d in (d for d in drafts(store, split) if d["id"] in child):
        last = child[d["id"]]
        while last["revision_id"] in child:
            last = child[last["revision_id"]]
        items.append(CritiqueItem(d["id"], Chat.from_dicts(json.loads(d["messages"])).last_user, d["text"],
                                  last["round"], last["principle_id"], last["critique"], last["text"],
                                  tuple(json.loads(last["flags"] or "[]")), last["model"] or "?"))
    return items


class GenerateScreen(PlumbScreen):
    NAME = "generate"
    MIN_WIDTH = 70
    MIN_HEIGHT = 20
    BINDINGS = [Binding("ctrl+r", "start", "Sample"), Binding("ctrl+g", "critique", "Critique & revise"),
                Binding("ctrl+t", "stop", "Stop")]

    def __init__(self) -> None:
        super().__init__()
        self.running: Any = None  # the work session of the sampling or critique in progress

    def compose_body(self) -> ComposeResult:
        with Horizontal():
            with Form(id="gen-form", classes="form"):
                yield FieldRow("model", id="model", placeholder="model spec (the critic, for ctrl+g)")
                yield FieldRow("answers", "2", id="n", type="integer")
                yield FieldRow("temperature", "0.8", id="temperature", type="number")
                yield FieldRow("max tokens", "256", id="max-tokens", type="integer")
                yield Label("Workspace prompts")
                yield Select([("train split", "train"), ("eval split", "eval")], value="train",
                             allow_blank=False, id="split", compact=True)
                yield Label("Or new prompts, one per line")
                yield TextArea(id="prompts")
                yield Checkbox("sample anew where answers exist", id="again")
                yield FieldRow("critique rounds", "2", id="rounds", type="integer")
                with Horizontal(classes="row"):
                    yield Button("Sample", id="start", variant="primary")
                    yield Button("Critique", id="critique")
                    yield Button("Stop", id="stop")
            with Vertical(id="gen-main"):
                yield Static("tab to the settings (esc leaves them), then ctrl+r to sample, ctrl+g to critique "
                             "the split's answers.", id="gen-status", classes="status")
                yield ProgressBar(id="gen-progress", show_eta=False)
                yield RichLog(id="gen-log", wrap=True, markup=False)
                yield CritiqueView(id="gen-critiques")

    def on_mount(self) -> None:
        self.query_one("#model", Input).value = self.session.ws.model("generate")

    @on(Select.Changed, "#split")
    def refresh_data(self) -> None:
        """List the chosen split's critiqued drafts."""
        split = self.query_one("#split", Select).value
        self.query_one(CritiqueView).show_items(latest_rounds(self.session.store, str(split)))

    def value(self, selector: str) -> str:
        return self.query_one(selector, Input).value

    @on(Button.Pressed, "#start")
    def action_start(self) -> None:
        from plumb.core.records import SamplingParams
        from plumb.pipeline.sample import SampleOptions, sample

        if self.busy():
            return
        value = self.value
        try:
            params = SamplingParams(n=number(value("#n"), int, 1, "answers per prompt"),
                                    temperature=number(value("#temperature"), float, 0, "temperature"),
                                    max_tokens=number(value("#max-tokens"), int, 1, "max new tokens"))
        except ValueError as exc:
            self.fail("check the settings", exc)
            return
        prompts = [p.strip() for p in self.query_one("#prompts", TextArea).text.splitlines() if p.strip()]
        opts = SampleOptions(model=value("#model").strip() or None, prompts=prompts,
                             split=str(self.query_one("#split", Select).value), params=params,
                             again=self.query_one("#again", Checkbox).value)
        self.begin(sample, opts, self.sampled)

    @on(Button.Pressed, "#critique")
    def action_critique(self) -> None:
        from plumb.pipeline.critique import CritiqueOptions, critique

        if self.busy():
            return
        try:
            rounds = number(self.value("#rounds"), int, 1, "critique rounds")
        except ValueError as exc:
            self.fail("check the settings", exc)
            return
        opts = CritiqueOptions(critic=self.value("#model").strip() or None, rounds=rounds,
                               split=str(self.query_one("#split", Select).value))
        self.begin(critique, opts, self.critiqued)

    def busy(self) -> bool:
        if self.running is not None:
            self.notify("Work is already running; ctrl+t stops it.")
        return self.running is not None

    def begin(self, stage: Callable, opts: Any, done: Callable) -> None:
        """Run a pipeline stage in the background with its own cancel flag; ``done(out, error)`` on the UI."""
        self.query_one("#gen-log", RichLog).clear()
        self.query_one("#gen-progress", ProgressBar).update(total=None, progress=0)
        self.running = self.app.work_session()
        self.run_stage(stage, self.running, opts, done)

    @on(Button.Pressed, "#stop")
    def action_stop(self) -> None:
        if self.running is None:
            self.notify("Nothing is running.")
            return
        self.running.cancel.set()
        self.status("Stopping after the current chunk; what is finished is kept.")

    @work(thread=True, exclusive=True, group="generate", exit_on_error=False)
    def run_stage(self, stage: Callable, session: Any, opts: Any, done: Callable) -> None:
        from plumb.core.context import Cancelled

        try:
            out = stage(session, opts, self.sink())
        except Cancelled:
            self.app.call_from_thread(done, None, "")
        except PlumbError as exc:  # a model that fails to load, no prompts, no answers to critique
            self.app.call_from_thread(done, None, f"{exc}")
        except Exception as exc:  # a plugin bug: report it, keep the app
            self.app.call_from_thread(done, None, f"unexpected {type(exc).__name__}: {exc}")
        else:
            self.app.call_from_thread(done, out, "")

    @on(PlumbScreen.PipelineEvent)
    def progressed(self, message: PlumbScreen.PipelineEvent) -> None:
        event = message.event
        if event.kind == "stage":
            self.status(escape(printable(event.message)))
            self.query_one("#gen-progress", ProgressBar).update(total=event.total or None, progress=0)
        elif event.kind == "progress":
            self.query_one("#gen-progress", ProgressBar).update(total=event.total, progress=event.step)
        elif event.message:
            self.query_one("#gen-log", RichLog).write(printable(event.message))

    def ended(self, out: Any) -> None:
        """The work is over: a bar still waiting for its total shows full (done) or empty (stopped, failed)."""
        self.running = None
        bar = self.query_one("#gen-progress", ProgressBar)
        if bar.total is None:
            bar.update(total=1, progress=1 if out is not None else 0)

    def sampled(self, out: Any, error: str) -> None:
        self.ended(out)
        log = self.query_one("#gen-log", RichLog)
        if out is None and not error:
            self.status("Stopped. What was finished is stored; the same settings again make only the rest.")
            return
        if out is None:
            self.status(f"[red]Not sampled[/]: {escape(printable(error))}")
            self.fail("sampling stopped", error)
            return
        for s in out.stored:
            log.write(printable(f"[{s['prompt_id']}:{s['id']}] {s['text']}"))
        for prompt_id, prompt, why in out.failed:
            log.write(printable(f"failed prompt {prompt_id} ({prompt[:50]!r}): {why}"))
        reused = f" ({out.reused} already there)" if out.reused else ""
        self.status(f"Stored {len(out.stored)} answers{reused} from {escape(str(out.spec))} "
                    f"({escape(out.plugin)} {escape(out.version)}). Next: ctrl+g critiques them, or press 4 "
                    "to label pairs (two or more answers per prompt make a pair).")

    def critiqued(self, out: Any, error: str) -> None:
        self.ended(out)
        self.refresh_data()
        if out is None and not error:
            self.status("Stopped. What was finished is stored; ctrl+g again critiques only the rest.")
            return
        if out is None:
            self.status(f"[red]Not critiqued[/]: {escape(printable(error))}")
            self.fail("critique stopped", error)
            return
        flags = ", ".join(f"{k} {v}" for k, v in out.flags.most_common()) or "none"
        already = f"; {out.already} drafts were already critiqued" if out.already else ""
        self.status(f"Critiqued {out.drafts} drafts ({out.rounds} rounds) with {escape(out.critic)}; "
                    f"{out.usable} final revisions usable; flagged: {escape(flags)}{already}.")

    def status(self, text: str) -> None:
        self.query_one("#gen-status", Static).update(text)
