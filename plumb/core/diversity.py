"""How varied a set of answers is, and whether one loops: the measures the report and GRPO's held-out
eval share (one definition, so the two cannot drift apart)."""

from __future__ import annotations

__all__ = ["distinct2", "distinct2_matched", "degenerate"]


def distinct2(texts: list[str]) -> float:
    """Distinct lower-cased word bigrams over all bigrams of the answers (1 = no bigram repeats)."""
    grams = [tuple(w[i:i + 2]) for w in (t.lower().split() for t in texts) for i in range(len(w) - 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def distinct2_matched(pairs: list[tuple[str, str]]) -> dict[str, float]:
    """Distinct-2 of each side with each pair's answers cut to the shorter one's word count."""
    base, tuned = [], []
    for a, b in pairs:
        a, b = a.split(), b.split()
        n = min(len(a), len(b))
        base.append(" ".join(a[:n]))
        tuned.append(" ".join(b[:n]))
    return {"base": round(distinct2(base), 4), "tuned": round(distinct2(tuned), 4)}


def degenerate(text: str, share: float = 0.3) -> bool:
    """True when more than ``share`` of the answer's word 4-grams are repeats (a loop)."""
    w = text.lower().split()
    grams = [tuple(w[i:i + 4]) for i in range(len(w) - 3)]
    return len(grams) >= 4 and 1 - len(set(grams)) / len(grams) > share
