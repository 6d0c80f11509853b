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
from tests.plugins import plugin_source


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


SLOW = plugin_source("slow_train.py")


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


# -- methods on tasks (GRPO): rewards, tasks file, their charts, the time per step ----------------------------


def test_grpo_gets_a_rewards_field_whose_errors_are_notifications_and_whose_value_reaches_train_options(ws):
    from textual.widgets import Select

    from plumb.pipeline.train import validate

    app = make_app(ws.root, "train")

    async def body(pilot):
        notes = record_notes(app)
        screen = app.screen
        await until(pilot, lambda: screen.form_method == "dpo", what="the dpo options")
        assert not screen.query_one("#task-fields").display  # dpo trains on pairs: no rewards
        screen.query_one("#method", Select).value = "grpo"
        await until(pilot, lambda: screen.form_method == "grpo", what="the grpo options")
        assert screen.query_one("#task-fields").display
        assert screen.query("#opt-num_generations") and not screen.query("#opt-rewards")
        fill(screen, policy="hf:.", rewards="max_words=1, no_such_verifier=2", **{"opt-steps": "2"})
        await pilot.press("ctrl+r")
        await until(pilot, lambda: any(sev == "error" for _, sev in notes), what="the refusal")
        assert any("no_such_verifier" in msg and "max_words" in msg for msg, _ in notes)  # names the known ones
        assert screen.running is None and app.session.store.one("SELECT count(*) FROM runs")[0] == 0
        notes.clear()
        fill(screen, rewards="")
        await pilot.press("ctrl+r")
        await until(pilot, lambda: any(sev == "error" for _, sev in notes), what="the refusal")
        assert any("needs rewards" in msg for msg, _ in notes) and screen.running is None
        notes.clear()
        fill(screen, rewards="max_words=1,  no_exclamation = 0.5", tasks="missing.jsonl")
        await pilot.press("ctrl+r")
        await until(pilot, lambda: any(sev == "error" for _, sev in notes), what="the refusal")
        assert any("missing.jsonl" in msg for msg, _ in notes) and screen.running is None
        (ws.root / "tasks.jsonl").write_text(json.dumps({"prompt": "Say red.", "answer": "red"}) + "\n")
        fill(screen, tasks="tasks.jsonl")
        opts = screen.options()
        assert opts.method == "grpo" and opts.rewards == ["max_words=1", "no_exclamation=0.5"]
        assert opts.tasks == str(ws.root / "tasks.jsonl") and opts.config["steps"] == 2
        assert validate(app.session, opts)["rewards"] == {"max_words": 1.0, "no_exclamation": 0.5}
        assert app.session.store.one("SELECT count(*) FROM runs")[0] == 0

    run(app, body)


TASKY = plugin_source("tasky.py")


def test_a_run_on_tasks_charts_its_reward_and_kl_and_estimates_the_time_left(ws):
    from textual.widgets import Select

    from plumb.tui.widgets.run_charts import RunCharts

    use_plugins(ws, {"tasky.py": TASKY})
    app = make_app(ws.root, "train")

    async def body(pilot):
        screen = app.screen
        statuses: list[str] = []
        shown = screen.status
        screen.status = lambda text: (statuses.append(str(text)), shown(text))[1]
        screen.query_one("#method", Select).value = "tasky"
        await until(pilot, lambda: screen.form_method == "tasky", what="the tasky options")
        fill(screen, policy="hf:.", rewards="max_words=1")
        charts = screen.query_one(RunCharts)
        assert charts.shown == ["loss", "rewards/accuracies", "rewards/margins"]  # before a run: the DPO charts
        await pilot.press("ctrl+r")
        await until(pilot, lambda: screen.running is not None, what="the run to start")
        await until(pilot, lambda: screen.running is None, timeout=120, what="the run to finish")
        assert "done" in text(app, "#train-status"), text(app, "#train-log")
        assert charts.shown == ["loss", "reward", "kl"]
        assert charts.chart("reward").points == [(1, 0.2), (2, 0.4), (3, 0.2 * 3), (4, 0.8)]
        assert [s for s, _ in charts.chart("kl").points] == [1, 2, 3, 4]
        first = next(s for s in statuses if "step 1/4" in s)
        assert "s/step" in first and "left" in first  # an estimate from the first step on
        run_row = app.session.store.one("SELECT * FROM runs ORDER BY id DESC LIMIT 1")
        assert run_row["status"] == "done" and json.loads(run_row["config"])["rewards"] == {"max_words": 1.0}

    run(app, body)


def test_the_step_clock_times_the_first_step_then_averages():
    from plumb.tui.screens.train import StepClock

    clock = StepClock()
    assert clock.estimate(0, 10) == ""
    clock.saw("stage", None, 90.0)
    clock.saw("log", None, 100.0)  # the trainer's last word before its loop
    clock.saw("metric", 0, 104.0)  # a step-0 evaluation is not a step: the first step is timed from it
    assert clock.estimate(0, 10) == ""
    clock.saw("metric", 1, 106.0)
    assert clock.per_step == 2.0 and clock.estimate(1, 11) == "2 s/step, about 20 s left"
    clock.saw("progress", 1, 106.1)
    clock.saw("metric", 3, 109.0)  # from the first step on: (109 - 106) / 2
    assert clock.per_step == 1.5 and clock.estimate(3, 3) == "1.5 s/step"
    clock.saw("metric", 41, 166.0)
    assert clock.estimate(41, 1241) == "1.5 s/step, about 30 min left"


def test_the_runs_charts_show_what_each_stored_run_reports(ws):
    from textual.widgets import DataTable

    from plumb.core.store import Provenance
    from plumb.tui.widgets.run_charts import RunCharts

    with ws.store() as store:
        dpo = store.start_run("dpo", {}, "/out/dpo", Provenance(model="hf:x"))
        grpo = store.start_run("grpo", {}, "/out/grpo", Provenance(model="hf:x"))
        rm = store.start_run("reward-model", {}, "/out/rm", Provenance(model="hf:x"))
        for step in (1, 2):
            store.log_metrics(dpo, step, {"loss": 0.7, "rewards/accuracies": 0.5, "rewards/margins": 0.1})
            store.log_metrics(grpo, step, {"loss": 0.0, "reward": 0.25 * step, "kl": 0.001 * step,
                                           "reward_std": 0.3, "eval/reward": 0.1})
            store.log_metrics(rm, step, {"loss": 0.6, "accuracy": 0.75, "margin": 0.2, "mean_reward": 0.0})
    app = make_app(ws.root, "runs")

    async def body(pilot):
        table = app.screen.query_one("#runs", DataTable)
        charts = app.screen.query_one(RunCharts)
        await until(pilot, lambda: table.row_count == 3, what="three runs")
        expected = {rm: ["loss", "accuracy", "margin"], grpo: ["loss", "reward", "kl"],
                    dpo: ["loss", "rewards/accuracies", "rewards/margins"]}
        for row, run_id in enumerate((rm, grpo, dpo)):  # newest first
            table.move_cursor(row=row)
            await until(pilot, lambda: app.screen.shown == run_id, what=f"run {run_id}")
            assert charts.shown == expected[run_id]
        table.move_cursor(row=1)
        await until(pilot, lambda: charts.shown == expected[grpo], what="the grpo run again")
        assert charts.chart("reward").points == [(1, 0.25), (2, 0.5)]

    run(app, body)
