"""Small statistics for reports: rates with their counts and 95% intervals, ratios of summed scores with
bootstrap intervals."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable


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


def bootstrap(n: int, statistic: Callable[[list[int]], float | None], draws: int = 2000,
              seed: int = 0) -> tuple[float, float]:
    """The 95% percentile interval of ``statistic`` over ``draws`` resamples (with replacement) of ``n``
    items, each resample given as its item indices; a resample where it is None is left out."""
    rng = random.Random(seed)
    boots = sorted(s for s in (statistic([rng.randrange(n) for _ in range(n)]) for _ in range(draws))
                   if s is not None)
    return boots[int(0.025 * len(boots))], boots[int(0.975 * len(boots)) - 1]


@dataclass(frozen=True)
class Ratio:
    """sum(tuned) / sum(base) over items, with a 95% percentile bootstrap interval over the items."""
    value: float
    lo: float
    hi: float
    base: float  # the mean per item, each side
    tuned: float
    n: int

    def __str__(self) -> str:
        return (f"{self.value:.2f} (95% CI {self.lo:.2f}-{self.hi:.2f}; P(correct) base {self.base:.2f}, "
                f"tuned {self.tuned:.2f}, {self.n} facts)")

    def to_dict(self) -> dict[str, float]:
        return {"ratio": self.value, "lo": self.lo, "hi": self.hi, "base": self.base, "tuned": self.tuned,
                "n": self.n}


def ratio(base: list[float], tuned: list[float], draws: int = 2000, seed: int = 0) -> Ratio:
    n = len(base)
    if not n or not sum(base):
        return Ratio(float("nan"), 0.0, float("inf"), 0.0, 0.0, n)

    def of(pick: list[int]) -> float | None:
        b = sum(base[i] for i in pick)
        return sum(tuned[i] for i in pick) / b if b else None

    lo, hi = bootstrap(n, of, draws, seed)
    return Ratio(sum(tuned) / sum(base), lo, hi, sum(base) / n, sum(tuned) / n, n)


def workspace_counts(store) -> dict[str, int]:
    """The counts every face shows (Home, `plumb data stats`, report.json), by one definition: rows per
    table, and ``pairs`` = the training pairs `plumb pairs build` and `plumb train` use by default
    (``pipeline.pairs.build``: one verdict per answer pair, ties and inconsistent verdicts dropped)."""
    from plumb.pipeline.pairs import build

    counts = store.counts()
    counts["pairs"] = len(build(store).pairs)
    return counts
