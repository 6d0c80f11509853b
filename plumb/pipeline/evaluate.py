"""The evaluate stage: base vs tuned on held-out prompts, measured.

Answers come from the compare stage (one loaded GGUF, the LoRA at scale 0 and
1, greedy, stored with provenance and reused on a rerun). On them:

* per principle, the share of its code checks passed, base and tuned, each
  with its count and 95% interval;
* the AI judge's win rate of tuned over base (each pair judged in both orders;
  a tie or an inconsistent verdict counts half), when a judge is given;
* mean length in words, and distinct-2 (distinct word bigrams over all
  bigrams of a side: a collapse into repeated phrasing shows as a drop). Over
  all bigrams it rises when answers shorten (fewer words, fewer chances to
  repeat one), so it is also given length-matched: each prompt's two answers
  cut to the shorter one's word count, so both sides count the same bigrams;
* the answers side by side, for the report.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from plumb.core.records import Chat, Event, EventSink, JudgeRequest, SamplingParams
from plumb.core.checks import check_texts, tally
from plumb.core.diversity import degenerate, distinct2, distinct2_matched
from plumb.core.store import Provenance
from plumb.pipeline.compare import CompareOptions, compare
from plumb.pipeline.session import Session
from plumb.pipeline.stats import Rate, bootstrap


@dataclass
class EvalOptions:
    base_gguf: str
    adapter_gguf: str
    split: str = "eval"
    max_tokens: int = 120
    judge: str | None = None  # a model spec; None: no judge
    constitution: str | None = None
    limit: int | None = None  # the split's first N prompts
    backend: str = "llamacpp"  # CompareOptions.backend


@dataclass
class Side:
    checks: dict[str, Rate]  # principle id (and "all") -> checks passed
    mean_words: float
    distinct2: float
    degenerate: float = 0.0  # share of answers whose 4-grams repeat over 30% of the time
    per_prompt: list[tuple[int, int]] = field(default_factory=list)  # (checks passed, checks run) per answer

    def to_dict(self) -> dict[str, Any]:
        return {"checks": {k: v.to_dict() for k, v in self.checks.items()}, "mean_words": self.mean_words,
                "distinct2": self.distinct2, "degenerate": self.degenerate}


@dataclass
class Evaluation:
    n: int
    base: Side
    tuned: Side
    win: dict[str, Any] = field(default_factory=dict)  # wins, losses, ties, n, rate, lo, hi; {} without a judge
    distinct2_matched: dict[str, float] = field(default_factory=dict)  # base, tuned: each pair cut to equal words
    examples: list[dict[str, str]] = field(default_factory=list)

    @property
    def difference(self) -> dict[str, float]:
        """Tuned minus base pooled pass rate, with a 95% paired bootstrap interval over the prompts."""
        return paired_difference(self.base.per_prompt, self.tuned.per_prompt)

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "base": self.base.to_dict(), "tuned": self.tuned.to_dict(), "win_rate": self.win,
                "difference": self.difference, "distinct2_matched": self.distinct2_matched,
                "examples": self.examples}


def paired_difference(base: list[tuple[int, int]], tuned: list[tuple[int, int]], draws: int = 2000,
                      seed: int = 0) -> dict[str, float]:
    """Pooled pass rate tuned - base over the same prompts, and its 95% interval by resampling prompts."""
    n = sum(t for _, t in base)
    if not base or not n or len(base) != len(tuned):
        return {}
    diff = (sum(k for k, _ in tuned) - sum(k for k, _ in base)) / n

    def of(pick: list[int]) -> float:
        total = sum(base[i][1] for i in pick)
        return (sum(tuned[i][0] for i in pick) - sum(base[i][0] for i in pick)) / total if total else 0.0

    lo, hi = bootstrap(len(base), of, draws, seed)
    return {"diff": diff, "lo": lo, "hi": hi, "prompts": len(base)}


def measure(session: Session, const: Any, texts: list[str]) -> Side:
    checked = check_texts(session.pm, const, texts, "eval")
    counts = tally(checked, [p.id for p in const.principles])
    words = [len(t.split()) for t in texts]
    return Side({k: Rate(*v) for k, v in counts.items()}, round(sum(words) / len(words), 1) if words else 0.0,
                round(distinct2(texts), 4), round(sum(map(degenerate, texts)) / len(texts), 4) if texts else 0.0,
                [c.counts() for c in checked])


def evaluate(session: Session, opts: EvalOptions, sink: EventSink | None = None) -> Evaluation:
    emit = sink or (lambda event: None)
    const = session.constitution(opts.constitution)
    params = SamplingParams(n=1, temperature=0.0, max_tokens=opts.max_tokens, seed=0)
    result = compare(session, CompareOptions(opts.base_gguf, opts.adapter_gguf, split=opts.split, params=params,
                                             constitution=opts.constitution, limit=opts.limit,
                                             backend=opts.backend), emit)
    rows = result.rows
    out = Evaluation(len(rows), measure(session, const, [r.base for r in rows]),
                     measure(session, const, [r.tuned for r in rows]),
                     examples=[asdict(r) for r in rows],
                     distinct2_matched=distinct2_matched([(r.base, r.tuned) for r in rows]))
    if opts.judge and rows:
        out.win = _win_rate(session, const, opts, rows, emit)
    return out


def _win_rate(session: Session, const: Any, opts: EvalOptions, rows, emit) -> dict[str, Any]:
    """Tuned (a) against base (b), both orders, through plumb_judge; stored as eval-split judgments."""
    spec = session.model("generate", opts.judge)
    emit(Event("stage", stage="judge-eval", message=f"tuned vs base on {len(rows)} prompts by {spec}"))
    messages = {p["id"]: p["messages"] for p in session.store.prompts(opts.split)}
    requests = [JudgeRequest(Chat.from_dicts(json.loads(messages[r.prompt_id])), r.tuned, r.base) for r in rows]
    judgments, plugin, version = session.pm.first("plumb_judge", ctx=session.context(emit), constitution=const,
                                                  requests=requests, judge=spec)
    if judgments is None:
        return {}
    prov = Provenance(model=str(spec), backend=spec.backend, params={"eval": "tuned-vs-base"}, plugin=plugin,
                      plugin_version=version, constitution_hash=const.hash)
    wins = losses = 0
    with session.store.transaction():
        for r, j in zip(rows, judgments):
            session.store.add_judgment(r.prompt_id, r.tuned_id, r.base_id, j, prov)
            wins += j.winner == "a"
            losses += j.winner == "b"
    n = len(judgments)
    ties = n - wins - losses
    half = Rate(2 * wins + ties, 2 * n)  # a tie is half a win
    lo, hi = half.interval
    return {"wins": wins, "losses": losses, "ties": ties, "n": n, "rate": half.value, "lo": lo, "hi": hi,
            "judge": str(spec)}
