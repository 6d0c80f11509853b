"""The Bradley-Terry reward model on the tiny model: the loss against the seeds' numbers, learning a
preference, scoring through the reward hook, driving GRPO, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from plumb.core.context import HookContext
from plumb.core.errors import PlumbError
from plumb.core.records import Chat, Completion, ModelSpec, RunSpec, Task
from plumb.train import reward_model as rm
from tests.test_train import make_pairs


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """A reward model trained on pairs whose chosen answer is short and ends with 'so yes yes'."""
    out = tmp_path_factory.mktemp("rm")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before the per-test one_thread; tiny ops want one thread
    events = []
    pairs = make_pairs(48, 0)
    pairs[0]["p"] = 0.5  # a tie the judge left: a soft target, not a preference
    run = RunSpec("reward-model", ModelSpec("hf", str(tiny_model_dir)), pairs, str(out),
                  config={"steps": 24, "lr": 5e-3, "batch_size": 8, "warmup_ratio": 0.0, "eval_every": 12,
                          "checkpoint_every": 1000})
    try:
        result = rm.train(run, HookContext(None, events.append))
    finally:
        torch.set_num_threads(threads)
    return result, [e.values for e in events if e.kind == "metric"]


def test_bradley_terry_loss_matches_the_seeds():
    # seeds: r_w = [2.1, 0.5], r_l = [1.0, 0.8]; pair 2 is wrong-signed, so it loses more
    per = rm.bt_loss(torch.tensor([2.1, 0.5]), torch.tensor([1.0, 0.8]))
    assert per.tolist() == pytest.approx([-math.log(1 / (1 + math.exp(-1.1))), -math.log(1 / (1 + math.exp(0.3)))])
    assert float(per.mean()) == pytest.approx(0.5709, abs=1e-4) and per[1] > per[0]
    # a soft label p = 0.5 (a tie) is minimized where the scores agree; a margin asks for a gap
    d = torch.tensor([0.0], requires_grad=True)
    rm.bt_loss(d, torch.tensor([0.0]), torch.tensor([0.5])).sum().backward()
    assert float(d.grad) == pytest.approx(0.0)
    assert float(rm.bt_loss(torch.tensor([1.0]), torch.tensor([0.0]), margin=1.0)) == pytest.approx(math.log(2))


def test_reward_model_learns_the_preference(trained):
    result, steps = trained
    assert steps[-1]["loss"] < 0.5 * steps[0]["loss"]
    for key in ("accuracy", "margin", "min_reward", "mean_reward", "max_reward", "grad_norm", "learning_rate"):
        assert key in steps[-1]
    assert result.metrics["eval/accuracy"] >= 0.8  # held-out pairs (10% of them), never trained on
    meta = json.loads((Path(result.adapter_dir) / rm.META).read_text())
    assert meta["format"] == "plumb-reward-model/1" and Path(meta["base"]).is_dir()
    # its scores order unseen pairs the way the data does
    held = make_pairs(16, 7)
    msgs = [[{"role": "user", "content": p["prompt"]}] for p in held]
    chosen = rm.score_texts(result.adapter_dir, msgs, [p["chosen"] for p in held])
    rejected = rm.score_texts(result.adapter_dir, msgs, [p["rejected"] for p in held])
    assert sum(c > r for c, r in zip(chosen, rejected)) >= 14


def test_the_trained_model_is_a_verifier(trained):
    from plumb.core.plugins import get_plugin_manager

    result, _ = trained
    pm = get_plugin_manager(entry_points=False)
    ctx = HookContext(pm)
    prompt = Chat.from_user("water fire cold?")
    tasks = [Task(prompt, meta={"reward_model": result.adapter_dir})] * 2 + [Task(prompt)]
    tasks.append(Task(prompt, meta={"check": {"verifier": "reward-model", "params": {"model": result.adapter_dir}}}))
    tasks.append(Task(prompt, meta={"reward_model": str(Path(result.adapter_dir).parent / "nothing-here")}))
    comps = [Completion(t, "x", "x") for t in ("left tree so yes yes", "the moon river blue green fast old high "
                                               "slow cold new low", "yes", "red cat so yes yes", "no")]
    got = [[r for r in rewards if r.name == "reward-model"] for rewards in ctx.reward(tasks, comps)]
    assert got[0][0].value > got[1][0].value and got[0][0].status == "ok"  # batched, ordered as trained
    assert got[2] == []  # a task that names no reward model: not applicable
    assert got[3][0].status == "ok"  # a constitution check naming the model
    assert got[4][0].status == "error" and "no reward model" in got[4][0].detail  # the batch goes on


def test_reward_model_drives_grpo(trained, tmp_path):
    from plumb.core.plugins import get_plugin_manager
    from plumb.train import grpo

    result, _ = trained
    rows = [{"messages": [{"role": "user", "content": f"word {i}?"}], "meta": {"reward_model": result.adapter_dir}}
            for i in range(8)]
    run = RunSpec("grpo", ModelSpec("hf", json.loads((Path(result.adapter_dir) / rm.META).read_text())["base"]),
                  rows, str(tmp_path / "g"), config={"rewards": {"reward-model": 1.0}, "steps": 2, "rollouts": "hf",
                                                     "max_completion_length": 6, "temperature": 1.5, "holdout": 0.0})
    events = []
    grpo.train(run, HookContext(get_plugin_manager(entry_points=False), events.append))
    metric = [e.values for e in events if e.kind == "metric"]
    assert len(metric) == 2 and all("rewards/reward-model/mean" in m for m in metric)
    assert all(m["rewards/errors"] == 0 and m["rewards/unscored"] == 0 for m in metric)


def test_too_few_pairs_is_a_clear_error(tiny_model_dir, tmp_path):
    run = RunSpec("reward-model", ModelSpec("hf", str(tiny_model_dir)), make_pairs(3, 0), str(tmp_path))
    with pytest.raises(PlumbError, match="at least 8 preference pairs; got 3"):
        rm.train(run)
    with pytest.raises(PlumbError, match="no reward model at"):
        rm.resolve(tmp_path)
