"""The charts of one training run side by side: loss, reward accuracy, reward margin."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Horizontal

from plumb.tui.widgets.metric_chart import MetricChart

CHARTS = (("loss", "loss"), ("rewards/accuracies", "reward accuracy"), ("rewards/margins", "reward margin"))


class RunCharts(Horizontal):
    def compose(self) -> ComposeResult:
        for key, title in CHARTS:
            yield MetricChart(key, title)

    def chart(self, key: str) -> MetricChart:
        return next(c for c in self.query(MetricChart) if c.key == key)

    def add(self, step: int, values: dict[str, float]) -> None:
        """One step's metrics, as a run reports them."""
        for chart in self.query(MetricChart):
            if chart.key in values:
                chart.add(step, values[chart.key])

    def show_run(self, store: Any, run_id: int | None) -> None:
        """A stored run's metrics (None: empty charts)."""
        for chart in self.query(MetricChart):
            chart.set_points(store.metrics(run_id, chart.key) if run_id is not None else [])
