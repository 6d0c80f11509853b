"""Style verifiers for measurable principles: word and sentence limits, no
exclamation marks, answer-first, regex.

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


def _max_words(text: str, n: int = 80) -> tuple[float, str]:
    w = words(text)
    return float(w <= n), f"{w} words (limit {n})"


def _max_sentences(text: str, n: int = 3) -> tuple[float, str]:
    s = len([p for p in re.split(r"(?<=[.!?])\s+", text.strip()) if p])
    return float(s <= n), f"{s} sentences (limit {n})"


def _no_exclamation(text: str) -> tuple[float, str]:
    c = text.count("!")
    return float(c == 0), f"{c} exclamation marks"


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
    try:
        found = re.search(pattern, text) is not None
    except re.error as exc:
        return 0.0, f"bad pattern: {exc}"
    return float(found == must_match), f"pattern {'found' if found else 'not found'}"


CHECKS: dict[str, tuple[Callable[..., tuple[float, str]], str]] = {
    "max_words": (_max_words, "1 if the answer has at most n words"),
    "max_sentences": (_max_sentences, "1 if the answer has at most n sentences"),
    "no_exclamation": (_no_exclamation, "1 if the answer has no '!'"),
    "starts_with_answer": (_starts_with_answer, "1 unless the answer opens with filler ('Great question!')"),
    "regex": (_regex, "1 if `pattern` is found (or not found, with must_match = false)"),
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
