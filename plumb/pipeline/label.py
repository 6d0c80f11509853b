"""A person's own A/B labels: the queue, one committed label per key, undo.

The queue holds candidate pairs (``judge.candidate_pairs``) that no person has
labelled yet, the ones worth a person's time first: pairs the AI judge found
inconsistent, then those it was least sure of (p(A) nearest 0.5), then pairs
it has not judged. Each pair is shown in a random order (seeded, so a rerun
shows the same); ``record`` maps the displayed order back to the samples and
commits the label at once, as a human judgment (a killed process loses
nothing); ``undo`` removes exactly that one judgment. The CLI (`plumb label`)
and the TUI's label screen both use these functions.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from plumb.core.errors import PlumbError
from plumb.core.records import Judgment
from plumb.core.store import Provenance, Store
from plumb.pipeline.judge import candidate_pairs


@dataclass(frozen=True)
class LabelPair:
    prompt_id: int
    prompt: str
    a_id: int
    b_id: int
    first: str  # the text shown first ("A" on screen)
    second: str
    swapped: bool  # True: b is shown first
    judge_winner: str | None  # the AI judge's verdict about (a, b), if any: a, b, tie
    judge_p_a: float | None
    judge_consistent: bool | None


def queue(store: Store, split: str = "train", seed: int = 0) -> list[LabelPair]:
    labelled = {(min(r[0], r[1]), max(r[0], r[1])) for r in
                store.query("SELECT a_id, b_id FROM judgments WHERE source = 'human'")}
    model = {}
    for r in store.query("SELECT a_id, b_id, winner, p_a, consistent FROM judgments WHERE source = 'model' "
                         "ORDER BY id"):
        flip = r["a_id"] > r["b_id"]
        model[(min(r[0], r[1]), max(r[0], r[1]))] = (r["winner"], r["p_a"], r["consistent"], flip)
    out = []
    for c in candidate_pairs(store, split):
        key = (min(c["a_id"], c["b_id"]), max(c["a_id"], c["b_id"]))
        if key in labelled or c["a"].strip() == c["b"].strip():
            continue
        winner = p_a = consistent = None
        if key in model:
            winner, p_a, consistent, flip = model[key]
            if flip != (c["a_id"] > c["b_id"]):  # the model judged (b, a): turn its verdict around
                winner = {"a": "b", "b": "a"}.get(winner, winner)
                p_a = None if p_a is None else 1 - p_a
        swapped = random.Random(f"{seed}:{key}").random() < 0.5
        first, second = (c["b"], c["a"]) if swapped else (c["a"], c["b"])
        out.append(LabelPair(c["prompt_id"], _prompt(c["messages"]), c["a_id"], c["b_id"], first, second, swapped,
                             winner, p_a, None if consistent is None else bool(consistent)))

    def worth(p: LabelPair) -> tuple[int, float]:
        if p.judge_consistent is False:
            return (0, 0.0)
        if p.judge_p_a is not None:
            return (1, abs(p.judge_p_a - 0.5))
        return (2, 0.0)

    return sorted(out, key=worth)


def _prompt(messages: str) -> str:
    import json

    return next((m["content"] for m in reversed(json.loads(messages)) if m["role"] == "user"), "")


def record(store: Store, pair: LabelPair, choice: str, constitution_hash: str | None = None) -> int:
    """Commit a person's choice about the displayed pair: "first" (A), "second" (B) or "tie"."""
    if choice not in ("first", "second", "tie"):
        raise PlumbError(f"a label is first, second or tie, not {choice!r}.")
    if choice == "tie":
        winner = "tie"
    else:
        winner = ("b" if pair.swapped else "a") if choice == "first" else ("a" if pair.swapped else "b")
    p_a = {"a": 1.0, "b": 0.0, "tie": 0.5}[winner]
    return store.add_judgment(pair.prompt_id, pair.a_id, pair.b_id, Judgment(winner, p_a, "human", source="human"),
                              Provenance(plugin="plumb label", params={"shown_first": "b" if pair.swapped else "a"},
                                         constitution_hash=constitution_hash))


def undo(store: Store, judgment_id: int) -> None:
    """Remove one human label (the last one pressed)."""
    with store.transaction():
        row = store.one("SELECT source FROM judgments WHERE id = ?", (judgment_id,))
        if row is None or row["source"] != "human":
            raise PlumbError(f"judgment {judgment_id} is not a person's label; nothing undone.")
        store.db.execute("DELETE FROM judgments WHERE id = ?", (judgment_id,))
