"""Small statistics for reports: rates with their counts and 95% intervals."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Rate:
    k: int
    n: int

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.k, self.n)

    def __str__(self) -> str:
        if not self.n:
            return "n/a (0)"
        lo, hi = self.interval
        return f"{self.value:.0%} ({self.k}/{self.n}, 95% CI {lo:.0%}-{hi:.0%})"

    def to_dict(self) -> dict[str, float]:
        lo, hi = self.interval
        return {"rate": self.value, "k": self.k, "n": self.n, "lo": lo, "hi": hi}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of k successes in n trials (good at small n and near 0 or 1)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half)))  # p inside, despite rounding


def workspace_counts(store) -> dict[str, int]:
    """The counts every face shows (Home, `plumb data stats`, report.json), by one definition: rows per
    table, and ``pairs`` = the training pairs `plumb pairs build` and `plumb train` use by default
    (``pipeline.pairs.build``: one verdict per answer pair, ties and inconsistent verdicts dropped)."""
    from plumb.pipeline.pairs import build

    counts = store.counts()
    counts["pairs"] = len(build(store).pairs)
    return counts
