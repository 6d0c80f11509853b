"""Style verifiers for measurable principles: word and sentence limits, no
exclamation marks, answer-first, regex.

Every check is graded: its value is 1.0 exactly when the answer passes, and
less the further it falls short (words over the limit, the number of
exclamation marks or forbidden phrases), so two answers to one prompt rarely
tie; a pass is ``value >= 1.0`` (``plumb.core.checks``).

A constitution names them in ``[[principles.checks]]``;
``plumb.core.rewards.check_completions`` runs them. Each is a per-item
``score`` function handed over at registration that answers only for a task
carrying a check (``task.check``) and returns None otherwise. Answers that
can be checked (exact, numeric, format, JSON schema, length) are in answers.py.
"""

from __future__ import annotations

import re
from typing import Callable

from plumb.core.hookspecs import hookimpl
from plumb.core.records import Completion, Reward, Task

_FILLER = re.compile(
    r"^\s*(great|good|excellent|interesting|what a|that's a|thanks|thank you|certainly|sure|of course|"
    r"absolutely|i'd be happy|i would be happy|happy to|let me|let's|as an ai|hello|hi|oh|ooh|ah|wow|"
    r"i'm so glad|i am so glad|i'm glad|so,)\b",
    re.IGNORECASE,
)


def words(text: str) -> int:
    return len(text.split())


def _over(count: int, limit: int) -> float:
    """1 at or under ``limit``, then falling linearly to 0 at twice the limit."""
    if count <= limit:
        return 1.0
    return max(0.0, 1.0 - (count - limit) / max(limit, 1))


def _max_words(text: str, n: int = 80) -> tuple[float, str]:
    w = words(text)
    return _over(w, n), f"{w} words (limit {n})"


def _max_sentences(text: str, n: int = 3) -> tuple[float, str]:
    s = len([p for p in re.split(r"(?<=[.!?])\s+", text.strip()) if p])
    return _over(s, n), f"{s} sentences (limit {n})"


def _no_exclamation(text: str) -> tuple[float, str]:
    c = text.count("!")
    return 1.0 / (1 + c), f"{c} exclamation marks"


def _starts_with_answer(text: str) -> tuple[float, str]:
    """Filler opener: a stock phrase, a short exclamation, or talk about the question itself."""
    first = re.split(r"(?<=[.!?])\s", text.strip(), maxsplit=1)[0]
    filler = (
        bool(_FILLER.match(first))
        or (first.endswith("!") and len(first.split()) <= 8)
        or bool(re.search(r"\b(a|an|such an?|this|what an?)\s+(\w+\s+)?(question|thing to ask)\b", first, re.I))
    )
    return float(not filler), "opens with filler" if filler else "opens with content"


def _regex(text: str, pattern: str, must_match: bool = True) -> tuple[float, str]:
    """must_match: 1 if found, else 0. must_match = false: 1 if absent, 1/(1 + k) for k matches."""
    try:
        found = sum(1 for _ in re.finditer(pattern, text))
    except re.error as exc:
        return 0.0, f"bad pattern: {exc}"
    if must_match:
        return float(found > 0), f"pattern {'found' if found else 'not found'}"
    return 1.0 / (1 + found), f"pattern found {found} times" if found else "pattern not found"


CHECKS: dict[str, tuple[Callable[..., tuple[float, str]], str]] = {
    "max_words": (_max_words, "1 at most n words, falling linearly to 0 at 2n"),
    "max_sentences": (_max_sentences, "1 at most n sentences, falling linearly to 0 at 2n"),
    "no_exclamation": (_no_exclamation, "1 with no '!', 1/(1+k) with k of them"),
    "starts_with_answer": (_starts_with_answer, "1 unless the answer opens with filler ('Great question!')"),
    "regex": (_regex, "1 if `pattern` is found (must_match = false: 1 if absent, 1/(1+k) for k matches)"),
}


def _text_check(name: str, fn: Callable[..., tuple[float, str]]) -> Callable[[Task, Completion], Reward | None]:
    """A per-item verifier for a style check: it applies only to tasks that ask for it."""

    def score(task: Task, completion: Completion) -> Reward | None:
        if task.check is None:
            return None
        try:
            value, detail = fn(completion.text, **task.params)
        except TypeError as exc:
            return Reward(name, 0.0, f"bad params for {name}: {exc}", status="error")
        return Reward(name, value, detail)

    return score


@hookimpl
def plumb_register_verifiers(register):
    for name, (fn, doc) in CHECKS.items():
        register(name, doc, score=_text_check(name, fn))
