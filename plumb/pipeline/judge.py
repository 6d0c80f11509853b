"""The judge stage: the workspace's candidate pairs judged against the constitution.

Candidate pairs (``candidate_pairs``) are two answers to the same prompt — two
samples, or a draft and its final unflagged revision. A pair whose two answers
are the same text is skipped and counted. Each pair is judged once per judge,
principle and constitution: a rerun (after a kill, say) judges only the pairs
not yet judged, and every chunk is stored as soon as it is back.

The judge is a model spec (``plumb_judge``: both orders, soft labels) or
``checks``: the constitution's code checks, where the answer passing more of
them (weighted by principle) wins and an equal score is a tie.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from plumb.core.errors import PlumbError
from plumb.core.records import Chat, Event, EventSink, JudgeRequest, Judgment
from plumb.core.checks import check_texts
from plumb.core.store import Provenance, Store
from plumb.pipeline.session import Session

CHUNK = 8
CHECKS = "checks"


@dataclass
class JudgeOptions:
    judge: str | None = None  # model spec, or "checks"; default: plumb.toml's [models] generate
    principle: str | None = None  # judge against one principle instead of the whole constitution
    split: str = "train"
    limit: int | None = None  # only the first N candidate pairs
    constitution: str | None = None


@dataclass
class Judged:
    judge: str
    pairs: int = 0  # candidates this run judged
    already: int = 0
    identical: int = 0
    outcomes: Counter = field(default_factory=Counter)  # a, b, tie, inconsistent, unparseable


def candidate_pairs(store: Store, split: str = "train") -> list[dict[str, Any]]:
    """Pairs of answers to the same prompt: two answers (sample, import, reference), or a draft
    and its last revision when that revision's critique carries no flags."""
    rows = store.query(
        """SELECT s.id, s.prompt_id, s.text, p.messages FROM samples s JOIN prompts p ON p.id = s.prompt_id
           WHERE p.split = ? AND s.kind IN ('sample', 'import', 'reference') ORDER BY s.prompt_id, s.id""", (split,))
    by_prompt: dict[int, list] = {}
    for r in rows:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    out = []
    for answers in by_prompt.values():
        for i, a in enumerate(answers):
            for b in answers[i + 1:]:
                out.append({"prompt_id": a["prompt_id"], "messages": a["messages"], "a_id": a["id"], "a": a["text"],
                            "b_id": b["id"], "b": b["text"]})
    # a draft and the end of its revision chain (draft -> r1 -> r2 ...), when that last revision is usable
    child = {r["sample_id"]: r for r in store.query(
        "SELECT c.sample_id, c.revision_id, c.flags, s.text FROM critiques c JOIN samples s ON s.id = c.revision_id "
        "ORDER BY c.id")}
    drafts = store.query("SELECT s.id, s.text, s.prompt_id, p.messages FROM samples s JOIN prompts p ON "
                         "p.id = s.prompt_id WHERE p.split = ? AND s.kind = 'sample' ORDER BY s.id", (split,))
    for d in drafts:
        if d["id"] not in child:
            continue
        last = child[d["id"]]
        while last["revision_id"] in child:
            last = child[last["revision_id"]]
        if last["flags"] is None:
            out.append({"prompt_id": d["prompt_id"], "messages": d["messages"], "a_id": d["id"], "a": d["text"],
                        "b_id": last["revision_id"], "b": last["text"]})
    return out


def _judged_keys(store: Store, judge: str, principle: str | None, const_hash: str) -> set[tuple[int, int]]:
    rows = store.query("SELECT a_id, b_id FROM judgments WHERE judge = ? AND principle_id IS ? AND "
                       "constitution_hash = ?", (judge, principle, const_hash))
    return {(min(r[0], r[1]), max(r[0], r[1])) for r in rows}


def _outcome(j: Judgment) -> str:
    if j.source != "model":
        return j.winner
    if j.ab is None or j.ba is None:
        return "unparseable"
    return "inconsistent" if j.ab != j.ba else j.winner


def judge(session: Session, opts: JudgeOptions, sink: EventSink | None = None) -> Judged:
    emit = sink or (lambda event: None)
    const = session.constitution(opts.constitution)
    if opts.principle is not None:
        try:
            const.principle(opts.principle)
        except KeyError:
            raise PlumbError(f"constitution {const.name!r} has no principle {opts.principle!r}; it has: "
                             + ", ".join(p.id for p in const.principles), exit_code=2) from None
    by_checks = opts.judge == CHECKS
    spec = None if by_checks else session.model("generate", opts.judge)
    name = CHECKS if by_checks else str(spec)
    if by_checks and not any(p.checks for p in const.principles):
        raise PlumbError(f"constitution {const.name!r} has no code checks; judge with a model instead.", exit_code=2)
    done = _judged_keys(session.store, name, opts.principle, const.hash)
    out = Judged(name)
    todo = []
    for pair in candidate_pairs(session.store, opts.split)[:opts.limit]:  # the first N: a rerun adds none
        key = (min(pair["a_id"], pair["b_id"]), max(pair["a_id"], pair["b_id"]))
        if key in done:
            out.already += 1
        elif pair["a"].strip() == pair["b"].strip():
            out.identical += 1
        else:
            done.add(key)
            todo.append(pair)
    out.pairs = len(todo)
    emit(Event("stage", stage="judge", total=len(todo), message=f"{len(todo)} pairs by {name}"
               + (f" ({out.already} already judged)" if out.already else "")))
    ctx = session.context(emit)
    for start in range(0, len(todo), CHUNK):
        ctx.check_cancelled()
        chunk = todo[start:start + CHUNK]
        if by_checks:
            judgments, plugin, version = by_the_checks(session, const, chunk), "plumb.pipeline.judge", ""
        else:
            requests = [JudgeRequest(Chat.from_dicts(json.loads(p["messages"])), p["a"], p["b"], opts.principle)
                        for p in chunk]
            judgments, plugin, version = session.pm.first("plumb_judge", ctx=ctx, constitution=const,
                                                          requests=requests, judge=spec)
            if judgments is None:
                raise PlumbError("no installed plugin judges (plumb_judge); `plumb plugins` lists them.")
        prov = Provenance(model=name, backend=spec.backend if spec else CHECKS, params={"principle": opts.principle},
                          plugin=plugin, plugin_version=version, constitution_hash=const.hash)
        with session.store.transaction():
            for pair, j in zip(chunk, judgments):
                session.store.add_judgment(pair["prompt_id"], pair["a_id"], pair["b_id"], j, prov)
                out.outcomes[_outcome(j)] += 1
        emit(Event("progress", stage="judge", step=min(start + CHUNK, len(todo)), total=len(todo)))
    return out


def check_scores(session: Session, const, texts: list[str]) -> list[float]:
    """Each answer's graded score by the constitution's checks (``plumb.core.checks``)."""
    return [c.score for c in check_texts(session.pm, const, texts, CHECKS)]


def by_the_checks(session: Session, const, pairs: list[dict[str, Any]]) -> list[Judgment]:
    scores = check_scores(session, const, [t for p in pairs for t in (p["a"], p["b"])])
    out = []
    for i in range(len(pairs)):
        a, b = scores[2 * i], scores[2 * i + 1]
        winner = "a" if a > b else "b" if b > a else "tie"
        out.append(Judgment(winner, {"a": 1.0, "b": 0.0, "tie": 0.5}[winner], CHECKS, source="checks",
                            reason=f"checks score a {a:.4g}, b {b:.4g}"))
    return out
