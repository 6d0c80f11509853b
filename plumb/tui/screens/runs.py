"""Runs: every training run with its status, and the highlighted run's charts, config, error and report.

The list reloads every few seconds while a run is still running; each load
first turns runs whose processes are gone into ``interrupted`` (the store's
reaper), so a run killed while the screen is open does not stay ``running``. A
stopped run shows the checkpoint a rerun resumes from, and how many times it
was started. A run's report is its ``report`` artifact: the Markdown report of ``plumb tune`` as it
is, or GRPO's held-out evaluations (``report.json``) as a table.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.markup import escape
from textual.widgets import DataTable, Markdown, Static

from plumb.tui.screens.base import PlumbScreen
from plumb.tui.widgets.run_charts import RunCharts

STATUS_STYLE = {"done": "green", "failed": "red", "interrupted": "yellow", "running": "cyan"}


class RunsScreen(PlumbScreen):
    NAME = "runs"
    MIN_WIDTH = 80
    MIN_HEIGHT = 20
    BINDINGS = [Binding("ctrl+r", "reload", "Reload")]

    def __init__(self) -> None:
        super().__init__()
        self.shown: int | None = None  # the run whose details are shown
        self.any_running = False

    def compose_body(self) -> ComposeResult:
        yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield RunCharts(id="run-charts")
        with VerticalScroll(id="run-detail-box"):
            yield Static("No runs yet: press 5 to train one.", id="run-detail")
            yield Markdown(id="run-report")

    def on_mount(self) -> None:
        self.query_one("#runs", DataTable).add_columns("run", "method", "status", "steps", "loss", "started",
                                                      "finished")
        self.set_interval(3.0, self._poll)

    def _poll(self) -> None:
        if self.any_running and self.is_active:
            self.load()

    def refresh_data(self) -> None:
        self.load()

    def action_reload(self) -> None:
        self.load()

    @work(thread=True, exclusive=True, group="runs", exit_on_error=False)
    def load(self) -> None:
        from plumb.pipeline.queries import runs_overview

        try:
            self.session.store.reap_runs()
            rows = runs_overview(self.session.store)
        except Exception as exc:  # a damaged store: say so, keep the app
            self.app.call_from_thread(self.fail, "could not read the runs", exc)
            return
        self.app.call_from_thread(self.show_runs, rows)

    def show_runs(self, rows: list[Any]) -> None:
        table = self.query_one("#runs", DataTable)
        table.clear()
        for r in rows:
            loss = "" if r["loss"] is None else f"{r['loss']:.4f}"
            table.add_row(str(r["id"]), Text(r["method"]), Text(r["status"], style=STATUS_STYLE.get(r["status"], "")),
                          str(r["steps"] or ""), loss, r["created"][:19].replace("T", " "),
                          (r["finished"] or "")[:19].replace("T", " "), key=str(r["id"]))
        self.any_running = any(r["status"] == "running" for r in rows)
        if rows:
            keep = self.shown if self.shown in {r["id"] for r in rows} else rows[0]["id"]
            table.move_cursor(row=table.get_row_index(str(keep)))
            self.show_run(keep)

    @on(DataTable.RowHighlighted, "#runs")
    def highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key.value is not None:
            self.show_run(int(event.row_key.value))

    def show_run(self, run_id: int) -> None:
        from plumb.pipeline.queries import run_artifacts

        store = self.session.store
        run = store.run(run_id)
        if run is None:
            return
        self.shown = run_id
        self.query_one(RunCharts).show_run(store, run_id)
        artifacts = run_artifacts(store, run_id)
        lines = [f"[b]run {run_id}[/] {escape(run['method'])}: {escape(run['status'])}  "
                 f"model {escape(run['model'] or '?')}",
                 f"out: {escape(run['out_dir'] or '-')}"]
        if run["checkpoint"]:
            lines.append(f"[yellow]checkpoint: {escape(run['checkpoint'])}[/] (a rerun resumes from it)")
        if run["attempts"] > 1:
            lines.append(f"started {run['attempts']} times (resumed into this run)")
        lines += [f"{escape(kind)}: {escape(path)}" for kind, path in artifacts]
        if run["final_metrics"]:
            final = json.loads(run["final_metrics"])
            lines.append("final: " + "  ".join(f"{escape(k)} {v:.4g}" for k, v in final.items()
                                               if isinstance(v, (int, float))))
        if run["error"]:
            lines.append(f"[red]{escape(run['error'])}[/]")
        config = json.loads(run["config"] or "{}")
        lines.append("[dim]config: " + escape(", ".join(f"{k}={v}" for k, v in sorted(config.items())
                                                        if k not in ("constitution", "checks"))) + "[/]")
        self.query_one("#run-detail", Static).update("\n".join(lines))
        reports = [Path(path) for kind, path in artifacts if kind == "report" and path.endswith((".md", ".json"))]
        reports.sort(key=lambda path: path.suffix != ".md")  # tune's report.md before its report.json
        report = self.query_one("#run-report", Markdown)
        report.display = bool(reports)
        if reports:
            report.update(report_markdown(reports[0]))


def report_markdown(path: Path) -> str:
    """A run's report as Markdown: a .md file as it is, GRPO's report.json as a table of its held-out
    evaluations (proxy reward and the signal it does not optimize, against KL)."""
    try:
        text = path.read_text()
    except OSError as exc:
        return f"*report {path}: {exc.strerror or exc}*"
    if path.suffix != ".json":
        return text
    try:
        report = json.loads(text)
        rows = report["evaluations"]
    except (ValueError, KeyError, TypeError):
        return f"*report {path}: not a report plumb wrote*"

    def cell(v: Any) -> str:
        return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"

    keys = [("step", "step"), ("kl", "KL"), ("eval/reward", "held-out reward"), ("eval/signal", "held-out signal"),
            ("eval/judge_win_rate", "judge win rate"), ("eval/distinct_2", "distinct-2")]
    keys = [(k, name) for k, name in keys if any(k in r for r in rows)]
    best = report.get("best") or {}
    out = [f"**Held-out evaluations** (best by the signal: step {best.get('step')})", "",
           "| " + " | ".join(name for _, name in keys) + " |", "|" + " ---: |" * len(keys)]
    out += ["| " + " | ".join(cell(r.get(k)) for k, _ in keys) + " |" for r in rows]
    return "\n".join(out)
