"""Judgments become training data: the one rule for pairs, SFT rows and KTO rows.

``build(store, by)`` takes one verdict per judged pair of samples (a person's
label over an import over a model judge over the checks, ``Store.verdicts``)
and keeps the decisive ones as (chosen, rejected) with ``p``, the chosen
answer's probability of being better (a soft label). What it drops it counts:
ties, order-inconsistent verdicts, unparseable judge replies, pairs of the same
text, and — with ``by="both"`` — pairs where the model judge and the checks
decided opposite ways. ``by`` says whose verdicts count besides a person's and
an import's:

* ``judge``  the AI judge only;
* ``checks`` the constitution's code checks only;
* ``both``   the judge where the checks tie or did not judge, the checks where
             the judge did not decide; a pair they decide opposite ways is dropped.

``training_rows`` turns the pairs (plus references and labels) into the rows
each method trains on; ``plumb train`` and ``plumb data export`` both use it.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plumb.core.errors import PlumbError
from plumb.core.store import Store

BY = {"judge": ("human", "import", "model"), "checks": ("human", "import", "checks"),
      "both": ("human", "import", "model", "checks")}


@dataclass
class Built:
    pairs: list[dict[str, Any]]
    dropped: Counter = field(default_factory=Counter)
    verdicts: int = 0


def _why_not(v: dict[str, Any]) -> str | None:
    if v["a"].strip() == v["b"].strip():
        return "identical"
    if v["source"] == "model" and (v["ab"] is None or v["ba"] is None):
        return "unparseable"
    if v["consistent"] == 0:
        return "inconsistent"
    if v["winner"] == "tie":
        return "tie"
    return None


def build(store: Store, by: str = "both", split: str = "train") -> Built:
    if by not in BY:
        raise PlumbError(f"pairs by {by!r}: use judge, checks or both.", exit_code=2)
    verdicts = store.verdicts(BY[by], split)
    checks = {}
    if by == "both":  # the checks' verdicts, to veto a model verdict that contradicts them
        checks = {(min(v["a_id"], v["b_id"]), max(v["a_id"], v["b_id"])): v for v in store.verdicts(("checks",), split)}
    out = Built([], verdicts=len(verdicts))
    for v in verdicts:
        why = _why_not(v)
        if why is None and v["source"] == "model" and checks:
            c = checks.get((min(v["a_id"], v["b_id"]), max(v["a_id"], v["b_id"])))
            if c is not None and c["winner"] != "tie":
                c_wins = c["a_id"] if c["winner"] == "a" else c["b_id"]
                v_wins = v["a_id"] if v["winner"] == "a" else v["b_id"]
                why = "judge and checks disagree" if c_wins != v_wins else None
        if why is not None:
            out.dropped[why] += 1
            continue
        a_wins = v["winner"] == "a"
        p_a = v["p_a"] if v["p_a"] is not None else 1.0 if a_wins else 0.0
        out.pairs.append({"messages": v["messages"], "chosen": v["a"] if a_wins else v["b"],
                          "rejected": v["b"] if a_wins else v["a"], "p": p_a if a_wins else 1.0 - p_a,
                          "judgment_id": v["judgment_id"], "source": v["source"],
                          "chosen_id": v["a_id"] if a_wins else v["b_id"],
                          "rejected_id": v["b_id"] if a_wins else v["a_id"]})
    return out


def training_rows(store: Store, shape: str, by: str = "both") -> list[dict[str, Any]]:
    """Rows of a method's data shape (``core.method.DATA_SHAPES``): ``pairs`` (the dpo family),
    ``sft`` prompt -> good answer (references, the chosen side of every pair — accepted revisions among
    them — and positive labels), ``labels`` good/bad completions (kto: labels, then both sides of every pair)."""
    pairs = build(store, by).pairs
    if shape == "sft":
        seen, rows = set(), []
        good = store.references() + [{"messages": p["messages"], "completion": p["chosen"]} for p in pairs] + [
            {"messages": r["messages"], "completion": r["completion"]} for r in store.labels() if r["label"]]
        for row in good:
            key = json.dumps(row, sort_keys=True)
            if key not in seen:
                seen.add(key)
                rows.append(row)
        return rows
    if shape == "labels":
        return store.labels() + [{"messages": p["messages"], "completion": p[side], "label": side == "chosen"}
                                 for p in pairs for side in ("chosen", "rejected")]
    return pairs


FORMATS = {"dpo": "pairs", "sft": "sft", "kto": "labels"}  # export format -> the rows' shape


def export_rows(store: Store, fmt: str, by: str = "both") -> list[dict[str, Any]]:
    """Rows in TRL's conversational shapes: dpo (with the soft label ``p``), sft (messages) or kto."""
    if fmt not in FORMATS:
        raise PlumbError(f"unknown export format {fmt!r}: use dpo, sft or kto.", exit_code=2)
    rows = training_rows(store, FORMATS[fmt], by)
    if fmt == "dpo":
        return [{"prompt": r["messages"], "chosen": [{"role": "assistant", "content": r["chosen"]}],
                 "rejected": [{"role": "assistant", "content": r["rejected"]}], "p": r["p"]} for r in rows]
    if fmt == "sft":
        return [{"messages": r["messages"] + [{"role": "assistant", "content": r["completion"]}]} for r in rows]
    return [{"prompt": r["messages"], "completion": [{"role": "assistant", "content": r["completion"]}],
             "label": r["label"]} for r in rows]


def export_file(store: Store, fmt: str, path: str | Path, by: str = "both") -> int:
    rows = export_rows(store, fmt, by)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return len(rows)
