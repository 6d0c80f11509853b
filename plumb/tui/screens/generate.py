"""Generate: sample answers to the workspace's prompts (or new ones) as background work.

The pipeline's sample stage runs in a thread worker with its own cancel flag;
its events move the progress bar, and each stored answer is listed. A rerun
with the same settings only makes what is missing. Self-critique and revision
against the constitution belong on this screen too; the TUI does not run them yet.
"""

from __future__ import annotations

from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.markup import escape
from textual.widgets import Button, Checkbox, Input, Label, ProgressBar, RichLog, Select, Static, TextArea

from plumb.core.errors import PlumbError
from plumb.tui.screens.base import PlumbScreen, number
from plumb.tui.widgets.field_row import FieldRow
from plumb.tui.widgets.form import Form

LATER = ("Critique and revise against the constitution: not in the TUI yet. "
         "Pairs for labelling come from two or more answers per prompt.")


class GenerateScreen(PlumbScreen):
    NAME = "generate"
    MIN_WIDTH = 70
    MIN_HEIGHT = 20
    BINDINGS = [Binding("ctrl+r", "start", "Sample"), Binding("ctrl+t", "stop", "Stop")]

    def __init__(self) -> None:
        super().__init__()
        self.running: Any = None  # the work session of the sampling in progress

    def compose_body(self) -> ComposeResult:
        with Horizontal():
            with Form(id="gen-form", classes="form"):
                yield FieldRow("model", id="model", placeholder="model spec")
                yield FieldRow("answers", "2", id="n", type="integer")
                yield FieldRow("temperature", "0.8", id="temperature", type="number")
                yield FieldRow("max tokens", "256", id="max-tokens", type="integer")
                yield Label("Workspace prompts")
                yield Select([("train split", "train"), ("eval split", "eval")], value="train",
                             allow_blank=False, id="split", compact=True)
                yield Label("Or new prompts, one per line")
                yield TextArea(id="prompts")
                yield Checkbox("sample anew where answers exist", id="again")
                with Horizontal(classes="row"):
                    yield Button("Sample", id="start", variant="primary")
                    yield Button("Stop", id="stop")
            with Vertical(id="gen-main"):
                yield Static("tab to the settings (esc leaves them), then ctrl+r.", id="gen-status", classes="status")
                yield ProgressBar(id="gen-progress", show_eta=False)
                yield RichLog(id="gen-log", wrap=True, markup=False)
                yield Static(LATER, classes="later")

    def on_mount(self) -> None:
        self.query_one("#model", Input).value = self.session.ws.model("generate")

    @on(Button.Pressed, "#start")
    def action_start(self) -> None:
        from plumb.core.records import SamplingParams
        from plumb.pipeline.sample import SampleOptions

        if self.running is not None:
            self.notify("Sampling is already running; ctrl+t stops it.")
            return
        value = lambda sel: self.query_one(sel, Input).value  # noqa: E731
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
        self.query_one("#gen-log", RichLog).clear()
        self.query_one("#gen-progress", ProgressBar).update(total=None, progress=0)
        self.running = self.app.work_session()
        self.run_sample(self.running, opts)

    @on(Button.Pressed, "#stop")
    def action_stop(self) -> None:
        if self.running is None:
            self.notify("Nothing is running.")
            return
        self.running.cancel.set()
        self.status("Stopping after the current chunk; what is finished is kept.")

    @work(thread=True, exclusive=True, group="sample", exit_on_error=False)
    def run_sample(self, session: Any, opts: Any) -> None:
        from plumb.core.context import Cancelled
        from plumb.pipeline.sample import sample

        try:
            out = sample(session, opts, self.sink())
        except Cancelled:
            self.app.call_from_thread(self.finished, None, "")
        except PlumbError as exc:  # a model that fails to load, no prompts
            self.app.call_from_thread(self.finished, None, f"{exc}")
        except Exception as exc:  # a plugin bug: report it, keep the app
            self.app.call_from_thread(self.finished, None, f"unexpected {type(exc).__name__}: {exc}")
        else:
            self.app.call_from_thread(self.finished, out, "")

    @on(PlumbScreen.PipelineEvent)
    def progressed(self, message: PlumbScreen.PipelineEvent) -> None:
        event = message.event
        if event.kind == "stage":
            self.status(event.message)
        elif event.kind == "progress":
            self.query_one("#gen-progress", ProgressBar).update(total=event.total, progress=event.step)
        elif event.message:
            self.query_one("#gen-log", RichLog).write(event.message)

    def finished(self, out: Any, error: str) -> None:
        self.running = None
        log = self.query_one("#gen-log", RichLog)
        if out is None and not error:
            self.status("Stopped. What was finished is stored; the same settings again make only the rest.")
            return
        if out is None:
            self.status(f"[red]Not sampled[/]: {escape(error)}")
            self.fail("sampling stopped", error)
            return
        for s in out.stored:
            log.write(f"[{s['prompt_id']}:{s['id']}] {s['text']}")
        for prompt_id, prompt, why in out.failed:
            log.write(f"failed prompt {prompt_id} ({prompt[:50]!r}): {why}")
        reused = f" ({out.reused} already there)" if out.reused else ""
        self.status(f"Stored {len(out.stored)} answers{reused} from {escape(str(out.spec))} "
                    f"({escape(out.plugin)} {escape(out.version)}). Next: press 4 to label pairs.")

    def status(self, text: str) -> None:
        self.query_one("#gen-status", Static).update(text)
