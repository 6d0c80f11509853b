"""The train screen driven by Pilot: a real short run on the tiny model, a child killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from plumb.core.dataio import import_file
from plumb.core.workspace import init_workspace
from plumb.tui.factory import make_app
from tests.test_tui import run, text, until, use_plugins


@pytest.fixture
def ws(tmp_path):
    ws = init_workspace(tmp_path / "ws")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Say {w}.", "chosen": w, "rejected": f"Well, {w} is a word"}) + "\n"
                             for w in ("red", "blue", "green", "cold")))
    with ws.store() as store:
        import_file(store, pairs)
    return ws


def fill(screen, **values: str) -> None:
    from textual.widgets import Input

    for name, value in values.items():
        screen.query_one(f"#{name}", Input).value = value


def record_notes(app) -> list[tuple[str, str]]:
    """Every notification the app shows: (message, severity)."""
    notes: list[tuple[str, str]] = []
    shown = app.notify

    def notify(message, *, severity="information", **kw):
        notes.append((str(message), severity))
        shown(message, severity=severity, **kw)

    app.notify = notify
    return notes


@pytest.mark.slow  # the training child imports torch, transformers and peft: ~30 s on two busy cores
def test_a_short_real_training_run_updates_the_charts(ws, tiny_model_dir):
    from textual.widgets import DataTable

    from plumb.tui.widgets.run_charts import RunCharts

    app = make_app(ws.root, "train")

    async def body(pilot):
        screen = app.screen
        await until(pilot, lambda: bool(screen.query("#opt-steps")), what="the dpo options")
        fill(screen, policy=f"hf:{tiny_model_dir}", **{"opt-steps": "3", "opt-batch_size": "2",
                                                      "opt-max_length": "64", "opt-lora_r": "4"})
        await pilot.press("ctrl+r")
        await until(pilot, lambda: screen.running is not None, what="the run to start")
        await until(pilot, lambda: screen.running is None, timeout=300, what="the run to finish")
        assert "done" in text(app, "#train-status"), text(app, "#train-log")
        charts = screen.query_one(RunCharts)
        assert [s for s, _ in charts.chart("loss").points] == [1, 2, 3]
        assert len(charts.chart("rewards/accuracies").points) == 3
        run_row = app.session.store.one("SELECT * FROM runs ORDER BY id DESC LIMIT 1")
        assert run_row["status"] == "done" and json.loads(run_row["config"])["steps"] == 3
        await pilot.press("7")
        table = app.screen.query_one("#runs", DataTable)
        await until(pilot, lambda: table.row_count == 1, what="the run listed")
        await until(pilot, lambda: len(app.screen.query_one(RunCharts).chart("loss").points) == 3, what="its chart")

    run(app, body)


SLOW = '''
import time
from plumb import hookimpl
from plumb.core.records import Event, RunResult

@hookimpl
def plumb_register_methods(register):
    register("slow", "a step every 50 ms until stopped")

@hookimpl
def plumb_optimize(ctx, method, run):
    if method != "slow":
        return None
    for step in range(1, 100_000):
        ctx.emit(Event("metric", step=step, values={"loss": 1.0 / step}))
        print(f"slow step {step}", flush=True)
        ctx.check_cancelled()
        time.sleep(0.05)
'''


def _children(marker: str) -> list[int]:
    """Live child processes of this one whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid() and marker in cmdline and " Z " not in stat:
            found.append(int(entry.name))
    return found


def test_a_training_child_killed_by_sigkill_leaves_the_ui_running_and_the_run_failed_and_resumable(ws):
    from textual.widgets import Select

    from plumb.tui.widgets.run_charts import RunCharts

    use_plugins(ws, {"slow.py": SLOW})
    app = make_app(ws.root, "train")

    async def body(pilot):
        notes = record_notes(app)
        screen = app.screen
        screen.query_one("#method", Select).value = "slow"
        await until(pilot, lambda: screen.form_method == "slow", what="the slow method's options")
        fill(screen, policy="hf:.")
        loss = screen.query_one(RunCharts).chart("loss")
        await pilot.press("ctrl+r")
        await until(pilot, lambda: len(loss.points) >= 3, what="the first steps")
        (child,) = _children("plumb.pipeline.child")
        os.kill(child, signal.SIGKILL)
        await until(pilot, lambda: screen.running is None, what="the run to end")
        assert app.is_running and "failed" in text(app, "#train-status")
        failed = app.session.store.one("SELECT * FROM runs ORDER BY id DESC LIMIT 1")
        assert failed["status"] == "failed" and "SIGKILL" in failed["error"] and "slow step" in failed["error"]
        assert any(sev == "error" and "SIGKILL" in msg for msg, sev in notes)
        await pilot.press("ctrl+r")  # run again: the same run directory, resumed where a checkpoint allows
        await until(pilot, lambda: len(loss.points) >= 2, what="the second run's steps")
        await pilot.press("ctrl+t")
        await until(pilot, lambda: screen.running is None, what="the stop")
        again = app.session.store.one("SELECT * FROM runs ORDER BY id DESC LIMIT 1")
        assert again["id"] != failed["id"] and again["status"] == "interrupted"
        assert again["out_dir"] == failed["out_dir"]
        assert "stopped" in text(app, "#train-status")

    run(app, body)
