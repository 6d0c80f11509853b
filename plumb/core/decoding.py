"""What every decoder shares, whatever runs the model: where two token sequences part, and where a stop
string cuts an answer. Used by llama.cpp (``plumb.llamacpp``: the prefix cache, batched prompts), by
transformers generation (``plumb.train.generate``) and by the trainer's tokenization (``plumb.train.data``)."""

from __future__ import annotations

from collections.abc import Sequence


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    hits = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)
