"""GRPO's rollouts from a pool of two real `plumb serve` processes: after each update the LoRA is saved and
every server that samples loads it; the trainer scores the token ids the servers sampled, and the
sampler/trainer gap is measured on the servers' own log-probs; one server killed mid-run loses no rollout."""

from __future__ import annotations

import json
import urllib.request

import pytest

from plumb.core.context import HookContext
from plumb.core.records import ModelSpec, RunSpec
from plumb.serving.pool import ServerWarning
from plumb.train import grpo
from tests.local_servers import port_of, running, start_plumb_server
from tests.test_grpo import FAST, flat_model, pm, tasks  # noqa: F401 - fixtures

pytestmark = pytest.mark.usefixtures("one_thread")


def adapters_on(base: str) -> list[str]:
    with urllib.request.urlopen(base + "/models", timeout=5) as r:
        return [m["root"] for m in json.load(r)["data"] if m["id"].startswith("plumb-")]


@pytest.fixture
def two_servers(flat_model, tmp_path):
    from plumb.export import export_gguf

    gguf = export_gguf(flat_model, tmp_path / "flat.f16.gguf", "f16")
    with running([start_plumb_server(gguf, tmp_path / f"server{i}.log", flat_model) for i in range(2)]) as procs:
        yield procs


def test_rollouts_from_a_pool_load_each_update_and_survive_a_killed_server(flat_model, two_servers, tmp_path, pm):
    (_, a), (b_proc, b) = two_servers
    out = tmp_path / "run"
    events, seen_on_b = [], []

    def sink(event):  # B dies after the first step it sampled with an update (steps without spread change nothing)
        events.append(event)
        if event.kind == "metric" and 0 < event.step < 4 and b_proc.poll() is None and adapters_on(b):
            seen_on_b.extend(adapters_on(b))
            b_proc.kill()
            b_proc.wait(10)

    run = RunSpec("grpo", ModelSpec("hf", str(flat_model)), tasks(32), str(out),
                  config={**FAST, "steps": 4, "rollouts": f"openai:{a},{b}", "gap_every": 1})
    with pytest.warns(ServerWarning, match=rf"{b} is unreachable .*moved to the other servers"):
        grpo.train(run, HookContext(pm, sink))

    steps = [e.values for e in events if e.kind == "metric" and e.step > 0]
    assert len(steps) == 4 and all(math_ok(s["loss"]) for s in steps)
    gaps = [s["sampling/logp_gap_per_token/max"] for s in steps]
    assert max(gaps) < 0.01, gaps  # f16 GGUF + LoRA in the server vs the fp32 trainer: the same distribution
    assert all(s["sampling/retokenized_mismatch"] == 0 for s in steps)  # trained on the servers' own token ids
    lines = [json.loads(x) for x in (out / "rollouts.jsonl").read_text().splitlines()]
    assert len(lines) == 4 * 4 * 8 and {x["sampler"] for x in lines} == {"openai"}  # nothing lost to the kill
    assert {x["step"] for x in lines} == {1, 2, 3, 4}
    # each update saved as a new peft directory, the older ones deleted (the last: what the held-out evaluation
    # after step 4 sampled with); both servers loaded the updates, A the last four (it keeps four of plumb's)
    assert [p.name for p in out.glob("adapter-step-*")] == ["adapter-step-4"]
    assert seen_on_b and set(seen_on_b) <= set(adapters_on(a))
    assert str((out / "adapter-step-4").resolve()) in adapters_on(a)


def math_ok(x: float) -> bool:
    return x == x and abs(x) < 1e6


def test_all_servers_down_stops_the_run_resumably(flat_model, two_servers, tmp_path, pm):
    """Both servers die after step 3: the run stops naming them, with steps 1-3's rollouts written and the
    step-2 checkpoint kept; with the servers back on their ports it resumes there and finishes."""
    from plumb.core.errors import BackendUnavailable
    from plumb.train import checkpoint

    (a_proc, a), (b_proc, b) = two_servers
    out = tmp_path / "run"

    def sink(event):
        if event.kind == "metric" and event.step == 3:
            for proc in (a_proc, b_proc):
                proc.kill()
                proc.wait(10)

    run = RunSpec("grpo", ModelSpec("hf", str(flat_model)), tasks(32), str(out),
                  config={**FAST, "steps": 4, "checkpoint_every": 2, "rollouts": f"openai:{a},{b}"})
    with pytest.raises(BackendUnavailable, match=rf"cannot reach .*{a}.*{b}"):
        grpo.train(run, HookContext(pm, sink))
    lines = [json.loads(x) for x in (out / "rollouts.jsonl").read_text().splitlines()]
    assert sorted({x["step"] for x in lines}) == [1, 2, 3] and len(lines) == 3 * 4 * 8
    assert [c.name for c in checkpoint.checkpoints(out)] == ["step-2"]

    gguf = tmp_path / "flat.f16.gguf"
    with running([start_plumb_server(gguf, tmp_path / f"back{i}.log", flat_model, port_of(url))
                  for i, url in enumerate((a, b))]):
        events = []
        run.config["resume"] = True
        grpo.train(run, HookContext(pm, events.append))
    assert [e.step for e in events if e.kind == "metric" and e.step > 0] == [3, 4]
