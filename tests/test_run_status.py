"""A run's status tells the truth after a crash: real `plumb train dpo` processes on the tiny model,
killed with SIGKILL mid-run (the parent; parent and child; a parent that trains in-process); the next
open of the workspace shows the run `interrupted` with its checkpoint; a rerun continues that same run
to `done` with one metric row per step. Plus the owner identity and the reaper on hand-made rows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from plumb.core.owner import Owner
from plumb.core.store import Provenance, Store
from plumb.core.workspace import init_workspace, open_workspace

STEPS = 40  # long enough to be killed mid-run on a busy machine; each tiny step takes milliseconds
CONFIG = {"steps": STEPS, "lr": 5e-3, "batch_size": 4, "checkpoint_every": 2, "seed": 1}


# -- the owner's identity -------------------------------------------------------------------------------


def test_an_owner_is_alive_only_while_that_very_process_runs():
    me = Owner.current()
    assert me.alive() and me.start is not None and me.boot
    assert not Owner(me.pid, me.start + 1, me.boot).alive()  # same pid, another start: a reused pid
    assert not Owner(me.pid, me.start, "another-boot").alive()  # the machine rebooted since
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    owner = Owner.of(gone.pid)
    assert owner.alive() or gone.poll() is not None
    gone.wait()
    assert not owner.alive()


def test_opening_the_workspace_reaps_runs_whose_processes_are_gone(tmp_path):
    ws = init_workspace(tmp_path / "ws")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_owner = Owner.of(dead.pid)
    dead.wait()
    ckpt = tmp_path / "out" / "checkpoints" / "step-6"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text("{}")
    with ws.store() as store:
        mine = store.start_run("dpo", {}, str(tmp_path / "mine"), Provenance())  # this process: alive
        orphan = store.start_run("dpo", {}, str(tmp_path / "out"), Provenance(), owner=dead_owner)
        child_lives = store.start_run("dpo", {}, "/x", Provenance(), owner=dead_owner)
        store.set_run_child(child_lives, Owner.current())  # the parent died, its child still trains
        store.db.execute("INSERT INTO runs (method, config) VALUES ('dpo', '{}')")  # from before owners
    with ws.store() as store:
        status = {r["id"]: r for r in store.query("SELECT * FROM runs")}
    assert [status[i]["status"] for i in (mine, child_lives)] == ["running", "running"]
    assert status[orphan]["status"] == "interrupted" and status[orphan]["checkpoint"] == str(ckpt)
    assert f"a rerun resumes from {ckpt}" in status[orphan]["error"] and status[orphan]["finished"]
    assert status[4]["status"] == "interrupted" and "no checkpoint" in status[4]["error"]


# -- real processes ----------------------------------------------------------------------------------------


@pytest.fixture
def dpo_ws(tmp_path, tiny_model_dir):
    from plumb.core.dataio import import_file
    from tests.test_train import make_pairs

    ws = init_workspace(tmp_path / "ws")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in make_pairs(16, 1)))
    with ws.store() as store:
        import_file(store, pairs)
    (ws.root / "run.toml").write_text("[train]\n" + "".join(f"{k} = {v}\n" for k, v in CONFIG.items()))
    return ws


def plumb_train(ws, tiny_model_dir, *extra: str) -> list[str]:
    return [sys.executable, "-m", "plumb", "train", "dpo", "--policy", f"hf:{tiny_model_dir}",
            "--config", "run.toml", *extra]


def start(ws, tiny_model_dir, *extra: str) -> subprocess.Popen:
    """`plumb train dpo` in its own process group (its training child joins it)."""
    env = {**os.environ, "PLUMB_THREADS": "1", "PLUMB_WORKSPACE": str(ws.root)}
    return subprocess.Popen(plumb_train(ws, tiny_model_dir, *extra), cwd=ws.root, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_for_step(ws, proc: subprocess.Popen, step: int, timeout: float = 120.0) -> dict:
    """The run's row once its metrics reach ``step`` (read without opening the workspace: no reaping)."""
    deadline = time.monotonic() + timeout
    with Store(ws.db_path) as store:
        while True:
            row = store.one("SELECT r.*, (SELECT max(step) FROM metrics m WHERE m.run_id = r.id) AS steps"
                            " FROM runs r ORDER BY id DESC LIMIT 1")
            if row is not None and (row["steps"] or 0) >= step:
                return dict(row)
            assert proc.poll() is None, f"plumb train ended early: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "no training step was recorded in time"
            time.sleep(0.02)


def status_after_open(ws, run_id: int, timeout: float = 20.0) -> tuple[dict, float]:
    """Open the workspace (as any face does) until the run is no longer running: (row, seconds taken)."""
    t0 = time.monotonic()
    while True:
        with open_workspace(ws.root).store() as store:
            row = dict(store.run(run_id))
        if row["status"] != "running" or time.monotonic() - t0 > timeout:
            return row, time.monotonic() - t0
        time.sleep(0.1)


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def rerun_to_done(ws, tiny_model_dir, run_id: int) -> None:
    """The same command again: it continues run ``run_id`` to done, one metric row per step, one run."""
    env = {**os.environ, "PLUMB_THREADS": "1", "PLUMB_WORKSPACE": str(ws.root)}
    done = subprocess.run(plumb_train(ws, tiny_model_dir), cwd=ws.root, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    with open_workspace(ws.root).store() as store:
        runs = store.query("SELECT * FROM runs")
        assert [(r["id"], r["status"], r["attempts"], r["error"], r["checkpoint"]) for r in runs] == [
            (run_id, "done", 2, None, None)]
        for key in ("loss", "rewards/accuracies", "grad_norm"):
            assert [s for s, _ in store.metrics(run_id, key)] == list(range(1, STEPS + 1)), key
        assert store.one("SELECT count(*) FROM metrics WHERE run_id = ? AND key = 'loss'", (run_id,))[0] == STEPS


@pytest.mark.usefixtures("one_thread")
def test_sigkill_of_the_parent_the_child_checkpoints_and_marks_the_run_interrupted_then_a_rerun_continues_it(
        dpo_ws, tiny_model_dir):
    parent = start(dpo_ws, tiny_model_dir)
    row = wait_for_step(dpo_ws, parent, 3)
    assert row["owner_pid"] == parent.pid and row["child_pid"] not in (None, parent.pid)
    assert Owner(row["child_pid"], row["child_start"], row["owner_boot"]).alive()
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    after, seconds = status_after_open(dpo_ws, row["id"])
    assert after["status"] == "interrupted", after
    assert seconds < 10
    assert "the process that started this run ended" in after["error"] and "stopped at step" in after["error"]
    assert after["checkpoint"] and Path(after["checkpoint"], "state.json").is_file()
    stopped = int(Path(after["checkpoint"]).name.split("-")[1])
    with Store(dpo_ws.db_path) as store:  # every step up to the checkpoint is recorded, by the child
        assert [s for s, _ in store.metrics(row["id"], "loss")][:stopped] == list(range(1, stopped + 1))
    deadline = time.monotonic() + 20
    while not gone(row["child_pid"]):
        assert time.monotonic() < deadline, "the training child outlived its parent"
        time.sleep(0.1)
    rerun_to_done(dpo_ws, tiny_model_dir, row["id"])


@pytest.mark.usefixtures("one_thread")
def test_sigkill_of_parent_and_child_the_next_open_marks_the_run_interrupted_then_a_rerun_continues_it(
        dpo_ws, tiny_model_dir):
    parent = start(dpo_ws, tiny_model_dir)
    row = wait_for_step(dpo_ws, parent, 3)
    os.killpg(parent.pid, signal.SIGKILL)  # parent and child at once: nobody is left to close the run
    parent.wait()
    deadline = time.monotonic() + 20
    while not gone(row["child_pid"]):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with Store(dpo_ws.db_path) as store:
        assert store.run(row["id"])["status"] == "running"  # what the store said before this fix, forever
    after, seconds = status_after_open(dpo_ws, row["id"])
    assert after["status"] == "interrupted" and seconds < 2, (after, seconds)
    assert "its process ended without closing it" in after["error"]
    assert after["checkpoint"] and f"a rerun resumes from {after['checkpoint']}" in after["error"]
    rerun_to_done(dpo_ws, tiny_model_dir, row["id"])


@pytest.mark.usefixtures("one_thread")
def test_sigkill_of_a_parent_that_trains_in_process_is_interrupted_at_the_next_open(dpo_ws, tiny_model_dir):
    parent = start(dpo_ws, tiny_model_dir, "--in-process")
    row = wait_for_step(dpo_ws, parent, 3)
    assert row["owner_pid"] == parent.pid and row["child_pid"] is None
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    after, seconds = status_after_open(dpo_ws, row["id"])
    assert after["status"] == "interrupted" and seconds < 2, (after, seconds)
    assert after["checkpoint"] is None or Path(after["checkpoint"]).is_dir()


# -- the TUI's Runs screen -----------------------------------------------------------------------------------


def test_the_runs_screen_shows_a_run_interrupted_with_its_checkpoint_when_its_process_dies(tmp_path):
    """A run whose process is alive shows `running`; killed while the screen is open, it shows `interrupted`
    and the checkpoint a rerun resumes from within a few seconds (the screen's reload reaps it)."""
    from textual.widgets import DataTable

    from plumb.tui.factory import make_app
    from tests.test_tui import run, text, until

    ws = init_workspace(tmp_path / "ws")
    ckpt = tmp_path / "out" / "checkpoints" / "step-2"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text("{}")
    trainer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        with ws.store() as store:
            run_id = store.start_run("dpo", {"lr": 1e-4}, str(tmp_path / "out"), Provenance(model="hf:x"),
                                     owner=Owner.of(trainer.pid))
            for step in (1, 2, 3):
                store.log_metrics(run_id, step, {"loss": 1.0 / step})
        app = make_app(ws.root, "runs")

        def status() -> str:
            table = app.screen.query_one("#runs", DataTable)
            return str(table.get_row_at(0)[2]) if table.row_count else ""

        async def body(pilot):
            await until(pilot, lambda: status() == "running", what="the running run")
            trainer.kill()
            trainer.wait()
            await until(pilot, lambda: status() == "interrupted", timeout=10, what="the run shown interrupted")
            detail = text(app, "#run-detail")
            assert "interrupted" in detail and f"checkpoint: {ckpt}" in detail
            assert "its process ended without closing it" in detail

        run(app, body)
    finally:
        trainer.kill()
        trainer.wait()


def test_a_resumed_grpo_run_stores_each_steps_rollouts_once(tmp_path):
    """A GRPO run's rollouts file grows by attempts; the rerun that continues the run drops the lines of
    the steps it samples again, and ingesting skips the steps stored by the earlier attempt."""
    from plumb.plugins.grpo import ingest_rollouts, trim_rollouts

    def lines(steps, tag):
        return "".join(json.dumps({
            "run_id": run_id, "step": s, "group": g, "messages": [{"role": "user", "content": f"q{g}"}],
            "completion": f"{tag} {s}.{g}", "finish_reason": "stop", "tokens": 2, "sampler": "hf", "params": {},
            "rewards": [{"name": "max_words", "value": 1.0, "status": "ok", "detail": "", "seconds": 0.0,
                         "check": None}], "reward": 1.0, "advantage": 0.0}) + "\n" for s in steps for g in (0, 1))

    store = Store(tmp_path / "s.db")
    out = tmp_path / "out"
    out.mkdir()
    prov = Provenance(model="hf:x", plugin="grpo")
    run_id = store.start_run("grpo", {}, str(out), prov)
    (out / "rollouts.jsonl").write_text(lines([1, 2, 3], "first") + '{"run_id": 1, "st')  # killed mid-line
    assert ingest_rollouts(store, run_id, str(out), prov) == 6  # the first attempt's parent stored them
    store.finish_run(run_id, "failed", "boom")
    store.resume_run(run_id, 2)  # the rerun resumes the step-2 checkpoint: step 3 is sampled again
    trim_rollouts(str(out), run_id, 2)
    with open(out / "rollouts.jsonl", "a") as f:
        f.write(lines([3, 4], "second"))
    assert ingest_rollouts(store, run_id, str(out), prov) == 4
    rows = store.query("SELECT r.step, s.text FROM rollouts r JOIN samples s ON s.id = r.sample_id"
                       " WHERE run_id = ? ORDER BY r.step, r.group_index", (run_id,))
    assert [(r[0], r[1]) for r in rows] == [
        (1, "first 1.0"), (1, "first 1.1"), (2, "first 2.0"), (2, "first 2.1"),
        (3, "second 3.0"), (3, "second 3.1"), (4, "second 4.0"), (4, "second 4.1")]
