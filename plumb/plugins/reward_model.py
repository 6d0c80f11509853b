"""Builtin Bradley-Terry reward model: the method ``reward-model`` and the verifier of the same name.

``plumb train reward-model`` trains one on the workspace's preference pairs
(soft labels ``p`` as BT targets) and writes it to ``OUT/adapter``. The verifier
scores completions with a trained one, batched, through ``plumb_reward``: a
task names the model in ``meta.reward_model`` (``plumb train grpo --reward
reward-model:PATH`` puts it there), or a constitution check does::

    [[principles.checks]]
    verifier = "reward-model"
    params = { model = "adapters/reward-model-20261123-101500" }

The reward is the model's raw score (only differences are meaningful: GRPO's
group normalization uses it as it is). A model that cannot be loaded scores
every completion 0 with status "error"; the batch goes on. torch is imported
only when a model is trained or used.
"""

from __future__ import annotations

from plumb.core.hookspecs import hookimpl
from plumb.core.method import Method
from plumb.core.records import Completion, Reward, RunResult, RunSpec, Task
from plumb.train.options import RewardModelConfig

NAME = "reward-model"


class RewardModel(Method):
    name = NAME
    description = ("Bradley-Terry reward model (base + scalar head + LoRA) on preference pairs, soft labels; "
                   "usable as the reward-model verifier")
    options = RewardModelConfig
    data = "pairs"

    def train(self, run: RunSpec, ctx) -> RunResult:
        from plumb.train.reward_model import train

        return train(run, ctx)


@hookimpl
def plumb_register_methods(register) -> None:
    register(RewardModel())


@hookimpl
def plumb_register_verifiers(register) -> None:
    register(NAME, "the score of a trained reward model (task meta.reward_model, or a check's params.model)")


def model_of(task: Task) -> str | None:
    """The reward model a task asks for, if any."""
    if task.check is not None:
        return task.params.get("model") if task.check.get("verifier") == NAME else None
    return task.meta.get("reward_model")


@hookimpl
def plumb_reward(tasks: list[Task], completions: list[Completion]) -> list[Reward | None] | None:
    paths = [model_of(t) for t in tasks]
    if not any(paths):
        return None
    out: list[Reward | None] = [None] * len(tasks)
    for i, t in enumerate(tasks):
        if paths[i] and not t.prompt.messages:  # a check run on the answer alone: nothing to judge it against
            out[i], paths[i] = Reward(NAME, 0.0, "a reward model scores an answer to a prompt; this task has "
                                      "no prompt", status="error"), None
    for path in dict.fromkeys(p for p in paths if p):
        idx = [i for i, p in enumerate(paths) if p == path]
        try:
            from plumb.train.reward_model import score_texts

            values = score_texts(path, [tasks[i].prompt.to_dicts() for i in idx], [completions[i].text for i in idx])
        except Exception as exc:  # a verifier never takes the batch down
            for i in idx:
                out[i] = Reward(NAME, 0.0, f"reward model {path} failed: {type(exc).__name__}: {exc}", status="error")
            continue
        for i, v in zip(idx, values):
            out[i] = Reward(NAME, float(v), f"Bradley-Terry score by {path}")
    return out
