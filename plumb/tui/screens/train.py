"""Train: a LoRA adapter from the workspace's data, with live charts and the run's log.

The method comes from the plugins' registry (a method object) and its options
form from the method's options model. Training runs through ``pipeline.train`` in a
child process, driven from a thread worker with its own cancel flag: stop sets
it (the child checkpoints and the run is marked interrupted); training again
with the same settings resumes that run from its last checkpoint. A child that
crashes or is killed leaves the UI running; the run is marked failed with its
last log lines, shown here as a notification.

A method that trains on tasks (``method.data == "tasks"``: GRPO) also gets a rewards
field (``NAME=WEIGHT, NAME2=WEIGHT``: the verifiers to optimize) and an
optional tasks file; ``pipeline.train.validate`` checks them (a verifier no
plugin offers, no rewards at all) and its refusal is a notification. The
charts show the metrics the run reports, and the status line the seconds per
step and the time left, once the first step is in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.markup import escape
from textual.widgets import Button, Input, Label, RichLog, Select, Static

from plumb.core.errors import PlumbError, ValidationFailed
from plumb.tui.screens.base import PlumbScreen
from plumb.tui.widgets.field_row import FieldRow
from plumb.tui.widgets.form import Form
from plumb.tui.widgets.run_charts import RunCharts
from plumb.tui.widgets.options_form import OptionsForm, parse_value


def on_tasks(entry: Any) -> bool:
    """Whether a registered method (its registry entry, or None) trains on tasks with reward weights."""
    return entry is not None and entry.impl.data == "tasks"


def parse_rewards(text: str) -> list[str]:
    """``"NAME=WEIGHT, NAME2=WEIGHT"`` as ``["NAME=WEIGHT", "NAME2=WEIGHT"]`` (a bare NAME weighs 1)."""
    items = [item.strip().replace(" ", "") for item in text.split(",")]
    return [item for item in items if item]


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class StepClock:
    """Seconds per step from the events' timestamps. The first step of this process is timed from the
    event just before it (the trainer's last word before its loop: rows ready, resumed, a step-0
    evaluation); later ones from the first step on, so the estimate settles as steps come in."""

    def __init__(self) -> None:
        self.mark: float | None = None  # the last event before the first step
        self.first: tuple[int, float] | None = None  # (step, time) of the first step
        self.per_step: float | None = None

    def saw(self, kind: str, step: int | None, ts: float) -> None:
        if kind == "metric" and step:
            if self.first is None:
                self.first = (step, ts)
                if self.mark is not None:
                    self.per_step = max(ts - self.mark, 0.0)
            elif step > self.first[0]:
                self.per_step = (ts - self.first[1]) / (step - self.first[0])
        elif self.first is None:
            self.mark = ts

    def estimate(self, step: int, total: int | None) -> str:
        """``"2.1 s/step, about 3 min left"`` (empty before the first step is timed)."""
        if self.per_step is None:
            return ""
        left = f", about {duration(self.per_step * (total - step))} left" if total and total > step else ""
        return f"{self.per_step:.2g} s/step{left}"


class TrainScreen(PlumbScreen):
    NAME = "train"
    MIN_WIDTH = 80
    MIN_HEIGHT = 20
    BINDINGS = [Binding("ctrl+r", "start", "Train / resume"), Binding("ctrl+t", "stop", "Stop")]

    def __init__(self) -> None:
        super().__init__()
        self.running: Any = None  # the work session of the run in progress
        self.run_id: int | None = None
        self.form_method: str | None = None  # the method the options form shows
        self.clock = StepClock()

    def methods(self) -> dict[str, Any]:
        """The training methods the plugins register (none, with a notification, when they conflict)."""
        try:
            return self.session.pm.registry.methods
        except PlumbError as exc:  # two plugins registering one name
            self.fail("no training methods", exc)
            return {}

    def compose_body(self) -> ComposeResult:
        methods = self.methods()
        with Horizontal():
            with Form(id="train-form"):
                yield Label("Method")
                yield Select([(name, name) for name in methods], value="dpo" if "dpo" in methods else Select.NULL,
                             id="method", compact=True)
                yield Static(id="method-help", classes="help")
                yield FieldRow("policy", id="policy", placeholder="model spec, e.g. hf:DIR")
                with Vertical(id="task-fields", classes="form"):
                    yield FieldRow("rewards", id="rewards", placeholder="verifier=1, other=0.5")
                    yield FieldRow("tasks file", id="tasks", placeholder="default: workspace")
                yield OptionsForm(id="options")
                yield Label("Other options (KEY=VALUE ...)")
                yield Input(id="extra", placeholder="label_smoothing=0.1 warmup_ratio=0", compact=True)
                with Horizontal(classes="row"):
                    yield Button("Train", id="start", variant="primary")
                    yield Button("Stop", id="stop")
            with Vertical(id="train-main"):
                yield Static("tab to the method and options (esc leaves them), then ctrl+r.", id="train-status",
                             classes="status")
                yield RunCharts(id="charts")
                yield RichLog(id="train-log", wrap=True, markup=True)

    async def on_mount(self) -> None:
        self.query_one("#policy", Input).value = self.session.ws.model("train")
        await self.method_changed()

    @on(Select.Changed, "#method")
    async def method_changed(self) -> None:
        method = self.query_one("#method", Select).value
        entry = self.methods().get(method) if method is not Select.NULL else None
        self.query_one("#method-help", Static).update(escape(entry.description) if entry else "")
        self.query_one("#task-fields").display = on_tasks(entry)
        await self.query_one("#options", OptionsForm).set_model(entry.impl.options if entry else None)
        self.form_method = entry.name if entry else None

    def options(self) -> Any:
        """The TrainOptions the form describes: for a method on tasks, with its rewards and tasks file
        (ValueError when the method is missing or a field cannot be read)."""
        from plumb.pipeline.train import TrainOptions

        method = self.query_one("#method", Select).value
        if method is Select.NULL:
            raise ValueError("choose a training method")
        if method != self.form_method:
            raise ValueError(f"the options of {method} are still being shown; try again")
        config = self.query_one("#options", OptionsForm).values()
        for item in self.query_one("#extra", Input).value.split():
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ValueError(f"other options: {item!r} is not KEY=VALUE")
            config[key] = parse_value(value)
        policy = self.query_one("#policy", Input).value.strip() or None
        if not on_tasks(self.methods().get(method)):
            return TrainOptions(str(method), policy=policy, config=config, isolate=True)
        return TrainOptions(str(method), policy=policy, config=config, isolate=True, tasks=self.tasks_file(),
                            rewards=parse_rewards(self.query_one("#rewards", Input).value))

    def tasks_file(self) -> str | None:
        """The tasks file typed (relative to the workspace), None when empty; ValueError when it is missing."""
        text = self.query_one("#tasks", Input).value.strip()
        if not text:
            return None
        path = Path(text).expanduser()
        path = path if path.is_absolute() else self.session.root / path
        if not path.is_file():
            raise ValueError(f"tasks file: no file {path}")
        return str(path)

    @on(Button.Pressed, "#start")
    def action_start(self) -> None:
        from plumb.pipeline.train import validate

        if self.running is not None:
            self.notify("A run is in progress; ctrl+t stops it.")
            return
        try:
            opts = self.options()
            validate(self.session, opts)  # bad options fail here, before a model loads
        except ValidationFailed as exc:
            self.fail("check the options", "\n".join(exc.problems))
            return
        except (ValueError, PlumbError) as exc:
            self.fail("cannot train", exc)
            return
        self.query_one(RunCharts).show_run(self.session.store, None)
        self.query_one("#train-log", RichLog).clear()
        self.status(f"Starting {opts.method}: the training process loads torch and the model...")
        self.run_id = None
        self.clock = StepClock()
        self.running = self.app.work_session()
        self.run_train(self.running, opts)

    @on(Button.Pressed, "#stop")
    def action_stop(self) -> None:
        if self.running is None:
            self.notify("No run is in progress.")
            return
        self.running.cancel.set()
        self.status("Stopping: the run keeps its last checkpoint; ctrl+r resumes it.")

    @work(thread=True, exclusive=True, group="train", exit_on_error=False)
    def run_train(self, session: Any, opts: Any) -> None:
        from plumb.pipeline.runs import Interrupted
        from plumb.pipeline.train import train

        try:
            done = train(session, opts, self.sink())
        except (Interrupted, PlumbError) as exc:  # stopped, or failed: the run row says which
            self.app.call_from_thread(self.finished, None, str(exc), isinstance(exc, PlumbError))
        except Exception as exc:  # a bug in a plugin: report it, keep the app
            self.app.call_from_thread(self.finished, None, f"unexpected {type(exc).__name__}: {exc}", True)
        else:
            self.app.call_from_thread(self.finished, done, "", False)

    @on(PlumbScreen.PipelineEvent)
    def progressed(self, message: PlumbScreen.PipelineEvent) -> None:
        event = message.event
        log = self.query_one("#train-log", RichLog)
        if event.run_id is not None:
            self.run_id = event.run_id
        self.clock.saw(event.kind, event.step, event.ts)
        if event.kind == "metric" and event.step is not None:
            self.query_one(RunCharts).add(event.step, event.values)
            of = f"/{event.total}" if event.total else ""
            eta = self.clock.estimate(event.step, event.total)
            self.status(f"run {self.run_id}: step {event.step}{of}" + (f"  ({eta})" if eta else ""))
        elif event.kind == "stage":
            self.status(escape(event.message))
            log.write(f"[b]{escape(event.stage or '')}[/] {escape(event.message)}")
        elif event.kind == "error":
            log.write(f"[red]{escape(event.message)}[/]")
        elif event.message:
            log.write(escape(event.message))

    def finished(self, done: Any, error: str, failed: bool) -> None:
        self.running = None
        log = self.query_one("#train-log", RichLog)
        if done is not None:
            reused = " (an identical run had finished: its adapter is reused)" if done.skipped else ""
            self.status(f"[green]run {done.run_id} done[/]{reused}: {escape(done.adapter_dir)}")
            for kind, path in done.artifacts:
                log.write(f"{escape(kind)}: {escape(path)}")
            self.notify(f"Training finished: run {done.run_id}. Runs (7) has its charts.", markup=False)
        elif failed and self.run_id is None:  # refused before a run started: a missing model, no data
            self.status(f"[red]Not started[/]: {escape(error)}")
            self.fail("training did not start", error)
            return
        elif failed:
            self.status(f"[red]run {self.run_id} failed[/]; ctrl+r runs it again (it resumes from its last "
                        "checkpoint, if one was written).")
            log.write(f"[red]{escape(error)}[/]")
            self.fail("training failed", error)
        else:
            self.status(f"run {self.run_id} stopped: {escape(error)}. ctrl+r resumes it.")

    def status(self, text: str) -> None:
        self.query_one("#train-status", Static).update(text)
