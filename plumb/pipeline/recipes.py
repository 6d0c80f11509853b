"""How `plumb tune` trains with each method it offers: one ``Recipe`` object per method.

``tune`` looks its method's recipe up by name (``RECIPES``) and asks it what to do: the rows it
takes from the checks' ranking (or none: GRPO samples its own answers every step), a trusted
judge's pair as a row, the learning rate, the schedule's seconds per step, how many passes over
the rows, and the method's own train settings. No stage asks which method it is. The numbers are
the starter's on 2 cores (bench/bench_tune.py, bench/RESULTS.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from plumb.pipeline import learn


def _judged_pair(pair: Mapping[str, Any]) -> dict[str, Any]:
    return {"prompt": json.loads(pair["messages"]), "chosen": pair["chosen"], "rejected": pair["rejected"]}


def _judged_answer(pair: Mapping[str, Any]) -> dict[str, Any]:
    return {"messages": json.loads(pair["messages"]) + [{"role": "assistant", "content": pair["chosen"]}]}


@dataclass(frozen=True)
class Recipe:
    method: str  # the registered training method (``plumb train METHOD``)
    lr: float
    step_s: float  # seconds per step on 2 cores: sizes the schedule only
    config: dict[str, Any] = field(default_factory=dict)  # the method's own train settings
    rows: Callable[[learn.Ranked], list[dict[str, Any]]] | None = None  # None: it samples itself (tasks)
    judged: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None  # a trusted judge's pair as one row
    epochs: float = 0.0  # at most this many passes over the rows: more memorise the few rows and cost facts
    anchored: bool = False  # takes --anchor (the weight of KL(base || tuned) on the answer's words)

    @property
    def samples_itself(self) -> bool:
        """True for an on-policy method that samples every step (GRPO): no rows, one round."""
        return self.rows is None


RECIPES = {
    # the chosen answer of the largest gap vs the worst, DPO with an RPO (SFT) term on the chosen
    "dpo": Recipe("dpo", lr=5e-4, step_s=12.0, config={"beta": 0.1, "rpo_alpha": 1.0}, rows=learn.dpo_rows,
                  judged=_judged_pair, epochs=2.0),
    # sft: the end-of-answer token weighs 1 and the words before it 0.1: tuning a style teaches the model
    # where to stop (the cuts) far more than new words, and + anchor * KL(base || tuned) over the vocabulary
    # at each word before the end (the base is the adapter switched off) keeps those words the base's, so
    # what it knows stays (the alignment-tax probe); --anchor sets it
    "sft": Recipe("sft", lr=3e-4, step_s=3.5, config={"content_weight": 0.1, "anchor": 0.3}, rows=learn.sft_rows,
                  judged=_judged_answer, epochs=3.0, anchored=True),
    # the constitution's checks as rewards (learn.check_rewards), llama.cpp rollouts
    "grpo": Recipe("grpo", lr=5e-4, step_s=16.0),
}
METHODS = tuple(RECIPES)
DEFAULT_METHOD = "sft"  # the bench's winner: best-of-k rejection sampling
DEFAULT_ROUNDS = 3  # on-policy rounds: +16 points held out on plain-speaker against +8 for one round, same time
