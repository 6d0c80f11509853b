"""The pipeline's contracts: events across processes, open registries, options checked
before work, hook context, one run lifecycle, a training child that dies."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest

from plumb.cli import cli
from plumb.core.errors import PlumbError
from plumb.core.events import from_json, to_json
from plumb.core.records import EVENT_KINDS, Event, ModelSpec, RunSpec
from tests.plugins import plugin_source

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def readme_block(marker: str) -> str:
    """The README's python code block that contains ``marker`` (the examples are tested as written)."""
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    return next(b for b in blocks if marker in b)


ECHO = readme_block('name = "echo"')
VERIFIER = readme_block("my_verifier.py")


def _use_plugins(ws, files: dict[str, str]) -> None:
    for name, text in files.items():
        (ws.root / name).write_text(text)
    cfg = (ws.root / "plumb.toml").read_text().replace(
        "plugins = []", "plugins = [" + ", ".join(f'"./{n}"' for n in files) + "]")
    (ws.root / "plumb.toml").write_text(cfg)


# -- events ------------------------------------------------------------------------------------


def test_events_round_trip_as_json_lines():
    for kind in EVENT_KINDS:
        event = Event(kind, run_id=3, step=2, total=9, values={"loss": 0.25, "nan": float("nan")},
                      message="a\nb \u00e9", stage="train")
        line = to_json(event)
        assert "\n" not in line
        back = from_json(line)
        assert back.kind == kind and back.values["loss"] == 0.25 and back.message == "a\nb \u00e9"
        assert back.ts == event.ts and back.stage == "train" and back.values["nan"] != back.values["nan"]
    with pytest.raises(ValueError):
        Event("progres")
    with pytest.raises(ValueError):
        from_json('{"kind": "nope"}')


def test_run_spec_round_trips():
    spec = RunSpec("dpo", ModelSpec("hf", "/m"), [{"messages": [], "chosen": "a", "rejected": "b"}], "/out",
                   {"lr": 1e-4}, 4)
    assert RunSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


# -- open registries ------------------------------------------------------------------------------


def test_readme_echo_backend_plugin_works_as_written(workspace, runner):
    _use_plugins(workspace, {"echo_backend.py": ECHO})
    res = runner.invoke(cli, ["generate", "--model", "echo:x", "hello", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert [s["text"] for s in out["samples"]] == ["olleh"]
    with workspace.store() as store:
        row = store.one("SELECT * FROM samples")
    assert (row["model"], row["backend"], row["plugin"]) == ("echo:x", "echo", "echo_backend")
    assert row["constitution_hash"] and json.loads(row["params"])["n"] == 1
    listing = json.loads(runner.invoke(cli, ["plugins", "--json"]).stdout)
    assert {"name": "echo", "description": "answers with the prompt reversed", "plugin": "echo_backend"} \
        in listing["backends"]
    # a rerun tops up nothing: the sample is already there
    again = json.loads(runner.invoke(cli, ["generate", "--model", "echo:x", "hello", "--json"]).stdout)
    assert again["samples"] == [] and again["reused"] == 1


def test_readme_verifier_plugin_works_as_written(workspace):
    from plumb.core.records import Chat, Completion, Task
    from plumb.core.rewards import score
    from plumb.pipeline.session import open_session

    _use_plugins(workspace, {"my_verifier.py": VERIFIER})
    with open_session(workspace.root) as session:
        assert session.pm.registry.verifiers["has_please"].plugin == "my_verifier"
        rows = score(session.pm, [Task(Chat(()))] * 2, [Completion("yes please", "m", "b"), Completion("no", "m", "b")])
    assert [[(r.name, r.value) for r in row if r.name == "has_please"] for row in rows] == [
        [("has_please", 1.0)], [("has_please", 0.0)]]


def test_a_name_registered_twice_names_both_plugins(workspace, runner):
    _use_plugins(workspace, {"echo_backend.py": ECHO, "echo_again.py": ECHO})
    res = runner.invoke(cli, ["generate", "--model", "echo:x", "hello"])
    assert res.exit_code == 2
    assert "'echo' is registered by two plugins: echo_backend and echo_again" in res.stderr


METHOD = plugin_source("count_method.py")


def test_a_plugin_method_trains_by_name_with_its_options_checked(workspace, runner, tmp_path):
    _use_plugins(workspace, {"count.py": METHOD})
    pairs = tmp_path / "p.jsonl"
    pairs.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    assert runner.invoke(cli, ["data", "import", str(pairs)]).exit_code == 0
    res = runner.invoke(cli, ["train", "count", "--policy", "hf:.", "-o", "steps=4", "--in-process", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["metrics"] == {"loss": 0.25}
    with workspace.store() as store:
        assert store.metrics(out["run_id"], "loss")[-1] == (4, 0.25)
        assert store.run(out["run_id"])["status"] == "done"
    bad = runner.invoke(cli, ["train", "count", "--policy", "hf:.", "-o", "steps=0", "-o", "speed=9"])
    assert bad.exit_code == 2
    assert "count: option 'steps': Input should be greater than or equal to 1" in bad.stderr
    assert "count: unknown option 'speed'" in bad.stderr


def test_bad_dpo_options_fail_before_any_model_loads(workspace, runner):
    """--lr -1 and --steps 0 are refused in milliseconds, naming the key (no torch import)."""
    for flags, key in ((["--lr", "-1"], "'lr'"), (["--steps", "0"], "'steps'"), (["-o", "betta=0.2"], "'betta'"),
                       (["-o", "beta=fast"], "'beta'")):
        start = time.perf_counter()
        res = runner.invoke(cli, ["train", "dpo", *flags])
        assert res.exit_code == 2, (flags, res.output)
        assert key in res.stderr and time.perf_counter() - start < 2
    res = runner.invoke(cli, ["train", "nosuch"])
    assert res.exit_code == 2 and "no installed plugin offers the method 'nosuch'" in res.stderr


def test_constitution_naming_a_missing_verifier_is_refused_before_work(workspace, runner):
    bad = workspace.root / "mine.toml"
    bad.write_text('name = "mine"\nversion = "1"\ndescription = "d"\n[[principles]]\nid = "p"\ntext = "t"\n'
                   '[[principles.checks]]\nverifier = "no_such_check"\n')
    res = runner.invoke(cli, ["generate", "--model", "llamacpp:x.gguf", "-c", str(bad), "hi"])
    assert res.exit_code == 2
    assert "principle 'p'" in res.stderr and "no_such_check" in res.stderr


# -- hook context and rewards ------------------------------------------------------------------------


def test_hook_context_generates_scores_and_cancels(workspace):
    from plumb.core.records import Chat, Completion, SamplingParams, Task
    from plumb.pipeline.session import open_session

    _use_plugins(workspace, {"echo_backend.py": ECHO})
    with open_session(workspace.root) as session:
        events = []
        ctx = session.context(events.append, run_id=5)
        assert ctx.generate("echo:x", [Chat.from_user("abc")], SamplingParams(n=2))[0][0].text == "cba"
        assert ctx.option_logprobs("echo:x", [Chat.from_user("abc")], ["A", "B"]) is None  # echo cannot
        task = Task(Chat(()), meta={"check": {"verifier": "max_words", "params": {"n": 2}}})
        rewards = ctx.reward([task] * 3, [Completion(t, "m", "b") for t in ("one two", "one two three", "1 2 3 4")])
        assert [[r.value for r in row] for row in rewards] == [[1.0], [0.5], [0.0]]  # graded: 0 at twice the limit
        ctx.log("hi")
        assert events[0].kind == "log" and events[0].run_id == 5
        assert not ctx.cancelled()
        session.cancel.set()
        assert ctx.cancelled()


RAISES = plugin_source("raising_verifier.py")


def test_a_verifier_that_raises_is_an_error_reward_and_the_batch_goes_on(workspace):
    from plumb.core.records import Chat, Completion, Task
    from plumb.core.rewards import score
    from plumb.pipeline.session import open_session

    _use_plugins(workspace, {"raises.py": RAISES})
    with open_session(workspace.root) as session:
        rows = score(session.pm, [Task(Chat(()))] * 2, [Completion("a", "m", "b")] * 2)
    for row in rows:
        by = {r.name: r for r in row}
        assert by["boom"].status == "error" and "verifier bug" in by["boom"].detail and by["boom"].value == 0
        assert by["half"].value == 0.5 and by["half"].status == "ok"


# -- the run lifecycle and the training child ------------------------------------------------------------


def test_lifecycle_marks_done_failed_interrupted(tmp_path):
    from plumb.core.store import Provenance, Store
    from plumb.pipeline.runs import run_lifecycle

    store = Store(tmp_path / "s.db")
    with run_lifecycle(store, "dpo", {}, "/o", Provenance()) as run:
        run.finish({"loss": 0.1}, [("adapter", "/o/adapter")])
    with pytest.raises(RuntimeError):
        with run_lifecycle(store, "dpo", {}, "/o", Provenance()):
            raise RuntimeError("exploded")
    with pytest.raises(KeyboardInterrupt):
        with run_lifecycle(store, "dpo", {}, "/o", Provenance()):
            raise KeyboardInterrupt
    rows = [(r["status"], r["error"], r["final_metrics"]) for r in store.query("SELECT * FROM runs ORDER BY id")]
    assert rows == [("done", None, '{"loss": 0.1}'), ("failed", "exploded", None),
                    ("interrupted", "interrupted by the user", None)]
    assert store.one("SELECT kind, path, run_id FROM artifacts")[:] == ("adapter", "/o/adapter", 1)


SLOW_METHOD = plugin_source("slow_method.py")


def _train(session, **config):
    from plumb.pipeline.train import TrainOptions, train

    events = []
    opts = TrainOptions("slow", policy="hf:.", data="workspace", config=config, fresh=True, isolate=True)
    return events, lambda: train(session, opts, events.append)


@pytest.fixture
def slow_session(workspace, tmp_path, runner):
    from plumb.pipeline.session import open_session

    _use_plugins(workspace, {"slow.py": SLOW_METHOD})
    pairs = tmp_path / "p.jsonl"
    pairs.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    assert runner.invoke(cli, ["data", "import", str(pairs)]).exit_code == 0
    with open_session(workspace.root) as session:
        yield session


def test_child_streams_events_and_finishes(slow_session):
    events, go = _train(slow_session, steps=3)
    done = go()
    assert done.metrics == {"loss": 1.0}
    assert [e.step for e in events if e.kind == "metric"] == [1, 2, 3]
    assert slow_session.store.run(done.run_id)["status"] == "done"


def test_a_child_killed_by_sigkill_leaves_the_parent_and_marks_the_run_failed(slow_session):
    events, go = _train(slow_session, die_at=3)
    with pytest.raises(PlumbError, match=r"(?s)killed by signal SIGKILL.*about to die"):
        go()
    run = slow_session.store.one("SELECT * FROM runs ORDER BY id DESC LIMIT 1")
    assert run["status"] == "failed" and "SIGKILL" in run["error"] and "about to die" in run["error"]


def test_a_child_that_exits_without_a_final_event_is_failed_not_running(slow_session):
    _, go = _train(slow_session, exit_at=2)
    with pytest.raises(PlumbError, match="without a final event"):
        go()
    assert slow_session.store.one("SELECT status FROM runs ORDER BY id DESC LIMIT 1")[0] == "failed"


def test_cancel_stops_the_child_and_marks_the_run_interrupted(slow_session):
    from plumb.pipeline.runs import Interrupted

    events, go = _train(slow_session)
    timer = threading.Timer(1.5, slow_session.cancel.set)
    timer.start()
    with pytest.raises(Interrupted, match="stopped at step"):
        go()
    row = slow_session.store.one("SELECT * FROM runs ORDER BY id DESC LIMIT 1")
    assert row["status"] == "interrupted" and "stopped at step" in row["error"]
    assert len([e for e in events if e.kind == "metric"]) >= 3


def test_progress_is_reported_when_output_is_not_a_terminal(monkeypatch, capsys):
    from plumb.commands.progress import Progress

    monkeypatch.setenv("PLUMB_PROGRESS_SECONDS", "0")
    with Progress(live=False) as show:
        show(Event("stage", stage="train", message="dpo on 12 rows"))
        for step in (1, 2, 3):
            show(Event("metric", step=step, total=3, values={"loss": 0.5, "rewards/accuracies": 1.0}))
    err = capsys.readouterr().err
    assert "train  dpo on 12 rows" in err
    assert "train: 3/3" in err and "loss 0.5000" in err and err.count("train: ") == 3


def _kill_training_children() -> int:
    """SIGKILL every `python -m plumb.pipeline.child` process whose parent is this test process."""
    import os
    import signal as sig

    killed = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and b"plumb.pipeline.child" in cmd:
            os.kill(int(pid), sig.SIGKILL)
            killed += 1
    return killed


def test_dpo_child_killed_mid_run_is_failed_then_a_rerun_resumes_it(workspace, tiny_model_dir, tmp_path, runner):
    """The real trainer in a child: SIGKILL at step 5 marks the run failed (naming its step-4 checkpoint);
    the same train() again resumes from that checkpoint into the same directory and the same run, which
    finishes with one loss per step."""
    from plumb.pipeline.session import open_session
    from plumb.pipeline.train import TrainOptions, train
    from tests.test_train import make_pairs

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in make_pairs(16, 1)))
    assert runner.invoke(cli, ["data", "import", str(pairs)]).exit_code == 0
    opts = TrainOptions("dpo", policy=f"hf:{tiny_model_dir}",
                        config={"steps": 8, "lr": 5e-3, "batch_size": 4, "checkpoint_every": 4, "seed": 1})
    killed = []

    def sink(event):
        if event.kind == "metric" and event.step == 5 and not killed:
            killed.append(_kill_training_children())

    with open_session(workspace.root) as session:
        with pytest.raises(PlumbError, match="SIGKILL"):
            train(session, opts, sink)
        assert killed == [1]
        first = session.store.one("SELECT * FROM runs ORDER BY id DESC LIMIT 1")
        assert first["status"] == "failed" and first["checkpoint"].endswith("step-4")
        logs = []
        done = train(session, opts, lambda e: logs.append(e))
        assert done.out_dir == first["out_dir"] and done.run_id == first["id"]
        assert any("resumed from" in e.message and "step-4" in e.message for e in logs if e.kind == "log")
        assert [s for s, _ in session.store.metrics(done.run_id, "loss")] == [1, 2, 3, 4, 5, 6, 7, 8]
        row = session.store.run(done.run_id)
        assert (row["status"], row["attempts"], row["error"], row["checkpoint"]) == ("done", 2, None, None)
        assert session.store.one("SELECT count(*) FROM runs")[0] == 1
        again = train(session, opts)  # identical and finished: reused, not retrained
        assert again.skipped and again.run_id == done.run_id


PARENT = """
import sys
from plumb.pipeline.session import open_session
from plumb.pipeline.train import TrainOptions, train
with open_session(sys.argv[1]) as session:
    train(session, TrainOptions("slow", policy="hf:.", config={"quiet": True}, fresh=True),
          lambda e: print(e.kind, flush=True))
"""


def test_the_training_child_stops_when_its_parent_is_killed(slow_session, tmp_path):
    import os
    import signal as sig
    import subprocess
    import sys

    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(slow_session.root)], stdout=subprocess.PIPE,
                              text=True, cwd=slow_session.root)
    while parent.stdout.readline().strip() != "metric":  # the child is running once a step is reported
        assert parent.poll() is None
    children = [int(p) for p in os.listdir("/proc") if p.isdigit() and _parent_of(int(p)) == parent.pid]
    assert children
    parent.send_signal(sig.SIGKILL)
    parent.wait()
    deadline = time.time() + 20
    while any(Path(f"/proc/{c}").exists() and _state(c) != "Z" for c in children):
        assert time.time() < deadline, "the training child outlived its parent"
        time.sleep(0.1)


def _parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"


def test_compare_takes_one_typed_prompt_reuses_its_answers_and_counts_verdicts(workspace):
    """The compare stage on a single typed prompt (what the TUI's Compare sends): the prompt is stored as an
    eval prompt, each side answered by the backend registered for llamacpp (base alone, tuned with the
    adapter), a rerun reuses the stored answers; a person's verdict moves the win counts and the next
    unjudged eval prompt."""
    from plumb.core.backend import Backend
    from tests.fake_backend import serve_llamacpp
    from plumb.core.records import Completion
    from plumb.pipeline.compare import CompareOptions, compare, next_unjudged, side_models, win_counts
    from plumb.pipeline.label import LabelPair, record
    from plumb.pipeline.session import open_session

    calls: list[str] = []

    class Sides(Backend):
        name = "llamacpp"

        def generate(self, model, chats, params):
            calls.append(str(model))
            side = "tuned" if model.lora else "base"
            return [[Completion(f"{side}: {c.last_user}", str(model), "llamacpp")] for c in chats]

    with open_session(workspace.root) as session:
        serve_llamacpp(session.pm, Sides(), ("base.gguf", "tuned.gguf"), workspace.root)
        opts = CompareOptions("base.gguf", "tuned.gguf", prompt="Why is the sky blue?")
        (row,) = compare(session, opts).rows
        assert (row.prompt, row.base, row.tuned) == ("Why is the sky blue?", "base: Why is the sky blue?",
                                                     "tuned: Why is the sky blue?")
        assert [p["id"] for p in session.store.prompts("eval")] == [row.prompt_id]
        assert calls == ["llamacpp:base.gguf", "llamacpp:base.gguf+lora:tuned.gguf"]
        assert compare(session, opts).rows == [row] and len(calls) == 2  # stored answers reused

        models = side_models(opts)
        assert win_counts(session.store, models) == (0, 0, 0)
        assert next_unjudged(session.store, models) == row.prompt_id
        record(session.store, LabelPair(row.prompt_id, row.prompt, row.base_id, row.tuned_id, row.base, row.tuned,
                                        False, None, None, None), "second")
        assert win_counts(session.store, models) == (1, 0, 0)  # tuned won once
        assert next_unjudged(session.store, models) is None
        (again,) = compare(session, CompareOptions("base.gguf", "tuned.gguf", prompt_ids=(row.prompt_id,))).rows
        assert again == row
        with pytest.raises(PlumbError, match="missing.gguf"):
            compare(session, CompareOptions("base.gguf", "missing.gguf", prompt="hi"))
