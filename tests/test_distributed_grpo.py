"""`plumb train grpo` under torchrun: 2 CPU ranks (gloo, real processes) on the tiny model against 1 process.

Each step's 4 prompts are shared out as whole groups (rank 0 groups 0 and 2, rank 1 groups 1 and 3); every
answer is seeded by its group and place in it, so the 2-rank run samples the same answers as the 1-process run,
and the ranks' summed gradients are the one-process gradient of the same step (the dapo loss's denominator is
the step's kept tokens over both ranks, scale_rewards = "batch" divides by the whole step's reward std).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from plumb.core.context import HookContext
from plumb.core.records import ModelSpec, RunSpec
from plumb.train import grpo
from plumb.train.options import GRPOConfig
from tests.plugins import plugin_source
from tests.test_distributed import _env, _file
from tests.test_grpo import flat_model, tasks  # noqa: F401  (flat_model is a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 4
FLAGS = ["--steps", str(STEPS), "--seed", "3", "--lr", "0.02", "--reward", "digits", "-o", 'rollouts="hf"',
         "-o", "max_completion_length=8", "-o", "num_generations=4", "-o", "prompts_per_step=4",
         "-o", "num_iterations=2", "-o", 'scale_rewards="batch"', "-o", "eval_every=0",
         "-o", "checkpoint_every=2", "-o", "keep_checkpoints=0"]
TOLERANCE = 1e-5  # |loss, 2 ranks - loss, 1 process| at every step (measured: under 3e-8, hf and llama.cpp rollouts)
SAME = ("reward", "reward_std", "frac_reward_zero_std", "completions/mean_length", "rewards/digits/mean")


def _digits_pm():
    """The verifiers the workspace below loads (its ./digits.py and the builtins), for the in-process run."""
    import tests.plugins.digits as digits
    from plumb.core.plugins import get_plugin_manager

    pm = get_plugin_manager(entry_points=False)
    pm.register(digits, name="digits")
    return pm


def _rollouts(out: Path) -> list[tuple]:
    lines = [json.loads(x) for x in (out / "rollouts.jsonl").read_text().splitlines()]
    return [(x["step"], x["group"], x["completion"], x["reward"]) for x in lines]


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


def test_row_seeded_sampling_draws_from_the_tempered_top_p_distribution():
    from plumb.train.generate import RowSeeded

    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, -8.0])
    rows = 4000
    sampler = RowSeeded(list(range(rows)), 0.7, 0.95, "cpu")
    picks = sampler(None, logits.expand(rows, -1).clone()).argmax(-1)
    probs = (logits / 0.7).softmax(-1)
    keep = probs.sort(descending=True).values.cumsum(0) - probs.sort(descending=True).values < 0.95
    expected = torch.where(keep[probs.argsort(descending=True).argsort()], probs, 0.0)
    expected = expected / expected.sum()
    freq = torch.bincount(picks, minlength=5).float() / rows
    assert freq.tolist() == pytest.approx(expected.tolist(), abs=0.025)
    assert freq[-1] == 0  # outside the top-p nucleus: never drawn
    again = RowSeeded([7, 3], 0.7, 0.95, "cpu")(None, logits.expand(2, -1).clone()).argmax(-1)
    alone = RowSeeded([3], 0.7, 0.95, "cpu")(None, logits.expand(1, -1).clone()).argmax(-1)
    assert again[1] == alone[0]  # a row's draw is its seed's, whatever else is in the batch


def _two_ranks(flat_model, tmp_path, workspace, flags: list[str]) -> tuple[Path, dict]:
    """`plumb train grpo` on 16 digit tasks as 2 torchrun ranks in ``workspace``: (its out dir, rank 0's JSON)."""
    (workspace.root / "digits.py").write_text(plugin_source("digits.py"))
    toml = workspace.root / "plumb.toml"
    toml.write_text(toml.read_text().replace("plugins = []", 'plugins = ["./digits.py"]'))
    data = _file(tmp_path, "tasks.jsonl", [{"prompt": t["messages"][0]["content"]} for t in tasks(16)])
    two = tmp_path / "two"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "plumb", "train", "grpo", "--policy", f"hf:{flat_model}", "--tasks", str(data),
                           "--out", str(two), *flags, "--json"],
                          cwd=workspace.root, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return two, json.loads(proc.stdout[proc.stdout.index("{"):])  # rank 0's answer, the only one printed


def test_two_ranks_sample_and_train_as_one_process(flat_model, tmp_path, workspace):  # noqa: F811
    two, result = _two_ranks(flat_model, tmp_path, workspace, FLAGS)
    with workspace.store() as store:
        runs = store.query("SELECT id, status, config FROM runs")
        assert [(r["id"], r["status"]) for r in runs] == [(result["run_id"], "done")]  # one run, not one per rank
        two_loss = store.metrics(result["run_id"], "loss")
        groups = store.query('SELECT step, group_index, count(*) AS n FROM rollouts WHERE run_id = ? '
                             'GROUP BY step, group_index', (result["run_id"],))
        n_samples = store.one("SELECT count(*) FROM samples WHERE kind = 'rollout'")[0]
    # every rollout stored once: 4 steps x 4 groups x 4 answers, whichever rank sampled it
    assert sorted((g["step"], g["group_index"], g["n"]) for g in groups) == \
        [(s, g, 4) for s in range(1, STEPS + 1) for g in range(4)]
    assert n_samples == STEPS * 4 * 4
    assert [s for s, _ in two_loss] == list(range(1, STEPS + 1))

    # the same run in this process, alone, with the options the stage gave the ranks
    stored = json.loads(runs[0]["config"])
    config = {k: v for k, v in stored.items() if k in GRPOConfig.model_fields and k != "resume"}
    rows = [{"messages": t["messages"]} for t in tasks(16)]
    events = []
    run = RunSpec("grpo", ModelSpec("hf", str(flat_model)), rows, str(tmp_path / "alone"), config)
    grpo.train(run, HookContext(_digits_pm(), events.append))
    alone = {e.step: e.values for e in events if e.kind == "metric"}

    print(f"grpo loss, 1 process: {[alone[s]['loss'] for s in range(1, STEPS + 1)]}\n"
          f"grpo loss, 2 ranks:   {[v for _, v in two_loss]}\n"
          f"max |difference|: {max(abs(v - alone[s]['loss']) for s, v in two_loss):.3g}")
    # the same answers to the same groups (each group seeded by its index, not by the rank that sampled it)
    assert _rollouts(two) == _rollouts(tmp_path / "alone")
    assert [v for _, v in two_loss] == pytest.approx([alone[s]["loss"] for s, _ in two_loss], abs=TOLERANCE)
    assert any(alone[s]["loss"] != 0 for s in range(1, STEPS + 1))  # something was trained on
    assert 0 < max(alone[s]["frac_reward_zero_std"] for s in range(1, STEPS + 1))  # ...and something skipped
    with workspace.store() as store:
        for key in SAME + ("kl", "grad_norm", "eval/reward"):
            got = dict(store.metrics(result["run_id"], key))
            assert got == pytest.approx({s: alone[s][key] for s in got}, abs=TOLERANCE), key
    a, b = _adapter(two), _adapter(tmp_path / "alone")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a) and any(a[k].abs().max() > 0 for k in a)
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["step-2", "step-4"]
    assert json.loads((two / "report.json").read_text())["evaluations"][-1]["step"] == STEPS  # rank 0's watch

    # the 2-rank run's step-2 checkpoint, resumed in one process: the same run goes on
    shutil.rmtree(two / "checkpoints" / "step-4")
    shutil.rmtree(two / "adapter")
    events = []
    run = RunSpec("grpo", ModelSpec("hf", str(flat_model)), rows, str(two), {**config, "resume": True})
    grpo.train(run, HookContext(_digits_pm(), events.append))
    resumed = {e.step: e.values for e in events if e.kind == "metric"}
    assert sorted(resumed) == [3, 4]
    for s in (3, 4):
        assert resumed[s]["loss"] == pytest.approx(alone[s]["loss"], abs=TOLERANCE)
        assert resumed[s]["reward"] == pytest.approx(alone[s]["reward"], abs=1e-6)
    a = _adapter(two)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_two_ranks_sample_with_llamacpp_each_from_its_own_export(flat_model, tmp_path, workspace):  # noqa: F811
    flags = [*FLAGS[:FLAGS.index("--steps")], "--steps", "2", *FLAGS[FLAGS.index("--steps") + 2:]]
    flags[flags.index('rollouts="hf"')] = 'rollouts="llamacpp"'
    two, result = _two_ranks(flat_model, tmp_path, workspace, [*flags, "-o", "gap_every=1"])
    with workspace.store() as store:
        runs = store.query("SELECT id, status, config FROM runs")
        assert [(r["id"], r["status"]) for r in runs] == [(result["run_id"], "done")]
        assert store.one("SELECT count(*) FROM rollouts WHERE run_id = ?", (result["run_id"],))[0] == 2 * 4 * 4
        gap = store.metrics(result["run_id"], "sampling/logp_gap_per_token/max")
        two_loss = store.metrics(result["run_id"], "loss")
    assert [s for s, _ in gap] == [1, 2] and max(v for _, v in gap) < 0.01  # rank 0 measured it, on its adapter
    # one base GGUF (rank 0's), each rank's adapter exported to its own path: rank 1's after step 1, rank 0's
    # after step 2 too (the held-out evaluation at the end samples with it)
    assert sorted(p.name for p in two.glob("*.gguf")) == ["adapter-step-2.gguf", "base.f16.gguf"]
    assert sorted(p.name for p in (two / ".rank-1").glob("*.gguf")) == ["adapter-step-1.gguf"]

    stored = json.loads(runs[0]["config"])
    config = {k: v for k, v in stored.items() if k in GRPOConfig.model_fields and k != "resume"}
    run = RunSpec("grpo", ModelSpec("hf", str(flat_model)), [{"messages": t["messages"]} for t in tasks(16)],
                  str(tmp_path / "alone"), config)
    events = []
    grpo.train(run, HookContext(_digits_pm(), events.append))
    alone = {e.step: e.values["loss"] for e in events if e.kind == "metric" and e.step > 0}
    print(f"grpo loss (llama.cpp rollouts), 1 process: {list(alone.values())}\n"
          f"grpo loss (llama.cpp rollouts), 2 ranks:   {[v for _, v in two_loss]}")
    # llama.cpp seeds answer j of every prompt with seed + j, whatever else is in the batch: the same answers
    assert _rollouts(two) == _rollouts(tmp_path / "alone")
    assert [v for _, v in two_loss] == pytest.approx([alone[s] for s, _ in two_loss], abs=TOLERANCE)
