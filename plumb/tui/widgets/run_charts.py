"""The charts of one training run side by side, for the metrics that run reports.

Every chart in ``CHARTS`` is built once; those whose metric the run reports are
shown, in ``CHARTS`` order, at most ``MAX_SHOWN``: loss, reward accuracy and
margin for the DPO family, mean reward and KL for GRPO, accuracy and margin for
the reward model. A run that has reported nothing yet shows the DPO charts.
"""

from __future__ import annotations

from typing import Any, Iterable

from textual.app import ComposeResult
from textual.containers import Horizontal

from plumb.tui.widgets.metric_chart import MetricChart

CHARTS = (("loss", "loss"), ("rewards/accuracies", "reward accuracy"), ("rewards/margins", "reward margin"),
          ("reward", "mean reward"), ("kl", "KL"), ("accuracy", "accuracy"), ("margin", "margin"))
DEFAULT = ("loss", "rewards/accuracies", "rewards/margins")  # before a run reports anything
MAX_SHOWN = 4


def chosen(present: Iterable[str]) -> list[str]:
    """The charted metrics among ``present`` (a run's metric names), in chart order; DEFAULT when none."""
    have = set(present)
    return [key for key, _ in CHARTS if key in have][:MAX_SHOWN] or list(DEFAULT)


class RunCharts(Horizontal):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.seen: set[str] = set()  # the metric names the run shown has reported

    def compose(self) -> ComposeResult:
        for key, title in CHARTS:
            chart = MetricChart(key, title)
            chart.display = key in DEFAULT
            yield chart

    def chart(self, key: str) -> MetricChart:
        return next(c for c in self.query(MetricChart) if c.key == key)

    @property
    def shown(self) -> list[str]:
        """The metrics charted now, left to right."""
        return [c.key for c in self.query(MetricChart) if c.display]

    def _show(self, keys: list[str]) -> None:
        for chart in self.query(MetricChart):
            chart.display = chart.key in keys

    def add(self, step: int, values: dict[str, float]) -> None:
        """One step's metrics, as a run reports them; a metric not seen before may add its chart."""
        if not values.keys() <= self.seen:
            self.seen |= values.keys()
            self._show(chosen(self.seen))
        for chart in self.query(MetricChart):
            if chart.key in values:
                chart.add(step, values[chart.key])

    def show_run(self, store: Any, run_id: int | None) -> None:
        """A stored run's metrics (None: empty charts, ready for a new run)."""
        self.seen = set()
        for chart in self.query(MetricChart):
            points = store.metrics(run_id, chart.key) if run_id is not None else []
            chart.set_points(points)
            if points:
                self.seen.add(chart.key)
        self._show(chosen(self.seen))
