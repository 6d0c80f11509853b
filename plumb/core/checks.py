"""What a constitution's code checks say about an answer: one definition for every stage.

Each principle may name checks (verifiers on the ``plumb_reward`` hook). A check's
reward value is graded in [0, 1]; it **passes** when it ran (status ok) and its value
is 1.0. For an answer:

* ``passed``/``total``     how many checks passed, per principle and over all (the report);
* ``score``                the principles' weighted mean of the graded values, in [0, 1]
                           (ranking answers: pairs, best-of-k, GRPO rewards, checkpoint choice).

Every stage that speaks of checks (sample ranking, judge by the checks, agreement,
critique flags, compare, evaluate, tune) calls ``check_texts`` and reads these fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from plumb.core.records import Completion, Reward
from plumb.core.rewards import check_completions


def passed(reward: Reward) -> bool:
    """The one rule: a check passes when it ran and scored full marks."""
    return reward.status == "ok" and reward.value >= 1.0


@dataclass
class Checked:
    """One answer against the constitution's checks: (principle id, reward) in the constitution's order."""

    results: list[tuple[str, Reward]] = field(default_factory=list)
    weights: dict[str, float] = field(default_factory=dict)

    def counts(self, principle: str | None = None) -> tuple[int, int]:
        """(checks passed, checks run) for one principle, or all of them."""
        rows = [r for pid, r in self.results if principle in (None, pid)]
        return sum(passed(r) for r in rows), len(rows)

    def graded(self, principle: str) -> float:
        """The mean graded value of one principle's checks (errors count 0)."""
        values = [r.value if r.status == "ok" else 0.0 for pid, r in self.results if pid == principle]
        return sum(values) / len(values) if values else 1.0

    @property
    def score(self) -> float:
        """The principles' weighted mean of their graded values, in [0, 1]; 1.0 with no checks."""
        pids = list(dict.fromkeys(pid for pid, _ in self.results))
        total = sum(self.weights.get(pid, 1.0) for pid in pids)
        if not total:
            return 1.0
        return sum(self.weights.get(pid, 1.0) * self.graded(pid) for pid in pids) / total

    @property
    def all_passed(self) -> bool:
        done, n = self.counts()
        return done == n


def has_checks(constitution: Any) -> bool:
    return any(p.checks for p in constitution.principles)


def check_texts(pm: Any, constitution: Any, texts: list[str], model: str = "checks") -> list[Checked]:
    """Run every check of every principle on each text."""
    weights = {p.id: p.weight for p in constitution.principles}
    rows = check_completions(pm, constitution, [Completion(t, model, model) for t in texts])
    return [Checked(row, weights) for row in rows]


def tally(checked: list[Checked], principles: list[str]) -> dict[str, tuple[int, int]]:
    """(passed, run) per principle that has checks, then "all", summed over answers."""
    out: dict[str, list[int]] = {}
    for c in checked:
        for key in [*principles, None]:
            done, n = c.counts(key)
            if n:
                slot = out.setdefault(key or "all", [0, 0])
                slot[0] += done
                slot[1] += n
    return {k: (v[0], v[1]) for k, v in out.items()}
