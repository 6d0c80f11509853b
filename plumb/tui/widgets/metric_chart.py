"""A live line chart of one training metric against the step (textual-plotext)."""

from __future__ import annotations

import math

from textual_plotext import PlotextPlot


class MetricChart(PlotextPlot):
    """``key`` (a metric name such as ``loss``) per step; ``points`` holds what is drawn."""

    def __init__(self, key: str, title: str, *, id: str | None = None) -> None:
        super().__init__(id=id, classes="chart")
        self.key = key
        self.title = title
        self.points: list[tuple[int, float]] = []
        self._draw()

    def set_points(self, points: list[tuple[int, float]]) -> None:
        self.points = [(int(s), float(v)) for s, v in points if v is not None and math.isfinite(v)]
        self._draw()

    def add(self, step: int, value: float) -> None:
        if math.isfinite(value):
            self.points.append((int(step), float(value)))
            self._draw()

    def _draw(self) -> None:
        plt = self.plt
        plt.clear_data()
        plt.title(f"{self.title} {self.points[-1][1]:.3g}" if self.points else self.title)
        if self.points:
            steps, values = zip(*self.points)
            plt.plot(list(steps), list(values), marker="braille")
        self.refresh()
