"""How far the AI judge can be trusted: its agreement with a person and with the checks.

* judge vs person: pairs a person labelled and the model judge judged; the
  judge agrees when it reached the same decisive verdict. An inconsistent or
  tied model verdict on a pair the person decided counts as disagreement, so a
  judge that always answers "A" scores 0, not 50%.
* judge vs checks: for each principle with checks, the pairs whose two answers
  differ on that principle's checks; the checks prefer the answer passing
  more; the judge agrees when it chose that answer.

Per principle (judgments made against one principle, or the whole
constitution) and overall, each rate with its count and 95% interval, and the
least certain judged pairs (inconsistent, or p(A) nearest 0.5): the ones worth
a person's time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from plumb.core.checks import check_texts
from plumb.pipeline.session import Session
from plumb.pipeline.stats import Rate

ALL = "(whole constitution)"


@dataclass
class Agreement:
    judge: str
    with_person: dict[str, Rate] = field(default_factory=dict)  # principle (or ALL) -> rate
    with_checks: dict[str, Rate] = field(default_factory=dict)
    least_certain: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"judge": self.judge, "with_person": {k: v.to_dict() for k, v in self.with_person.items()},
                "with_checks": {k: v.to_dict() for k, v in self.with_checks.items()},
                "least_certain": self.least_certain}


def _winner_id(row) -> int | None:
    return {"a": row["a_id"], "b": row["b_id"]}.get(row["winner"])


def agreement(session: Session, judge: str | None = None, constitution: str | None = None,
              show: int = 5) -> Agreement:
    const = session.constitution(constitution)
    store = session.store
    judge = judge or str(session.model("generate"))
    model = store.query("SELECT j.*, sa.text AS a, sb.text AS b, p.text AS prompt FROM judgments j "
                        "JOIN samples sa ON sa.id = j.a_id JOIN samples sb ON sb.id = j.b_id "
                        "JOIN prompts p ON p.id = j.prompt_id WHERE j.source = 'model' AND j.judge = ? "
                        "AND j.constitution_hash = ? ORDER BY j.id", (judge, const.hash))
    human = {}
    for r in store.query("SELECT * FROM judgments WHERE source = 'human' ORDER BY id"):
        human[frozenset((r["a_id"], r["b_id"]))] = r
    out = Agreement(judge)
    tallies: dict[str, list[int]] = {}
    for r in model:
        h = human.get(frozenset((r["a_id"], r["b_id"])))
        if h is None or h["winner"] == "tie":
            continue
        agree = r["consistent"] != 0 and _winner_id(r) == _winner_id(h)
        for key in (r["principle_id"] or ALL, "overall"):
            tallies.setdefault(key, [0, 0])
            tallies[key][0] += agree
            tallies[key][1] += 1
    out.with_person = {k: Rate(*v) for k, v in tallies.items()}

    texts = sorted({t for r in model for t in (r["a"], r["b"])})
    results = dict(zip(texts, check_texts(session.pm, const, texts)))
    tallies = {}
    for p in (p for p in const.principles if p.checks):
        for r in model:
            if r["principle_id"] not in (None, p.id):
                continue
            score = {side: results[r[side]].graded(p.id) for side in ("a", "b")}
            if score["a"] == score["b"]:
                continue
            better = r["a_id"] if score["a"] > score["b"] else r["b_id"]
            agree = r["consistent"] != 0 and _winner_id(r) == better
            for key in (p.id, "overall"):
                tallies.setdefault(key, [0, 0])
                tallies[key][0] += agree
                tallies[key][1] += 1
    out.with_checks = {k: Rate(*v) for k, v in tallies.items()}

    def doubt(r) -> float:
        return -1.0 if r["consistent"] == 0 else abs((r["p_a"] if r["p_a"] is not None else 0.5) - 0.5)

    out.least_certain = [{"judgment_id": r["id"], "prompt": r["prompt"], "a": r["a"], "b": r["b"],
                          "p_a": r["p_a"], "consistent": r["consistent"], "principle": r["principle_id"]}
                         for r in sorted(model, key=doubt)[:show]]
    return out
