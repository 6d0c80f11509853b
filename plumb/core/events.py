"""Progress and metric events, from long work to whoever shows it.

Training and generation emit ``Event`` records through an ``EventSink``; the
CLI renders them as a rich progress bar, the store keeps the metrics, and a
child process can send them over a pipe as JSON lines.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Callable, Iterable

from plumb.core.records import Event, EventSink


def fan_out(*sinks: EventSink | None) -> EventSink:
    live = [s for s in sinks if s is not None]

    def emit(event: Event) -> None:
        for sink in live:
            sink(event)

    return emit


def to_store(store, run_id: int) -> EventSink:  # store: plumb.core.store.Store
    """Persist every metric event of a run, one committed transaction per step."""

    def emit(event: Event) -> None:
        if event.kind == "metric" and event.step is not None and event.values:
            store.log_metrics(run_id, event.step, event.values)

    return emit


def to_json(write: Callable[[str], object]) -> EventSink:
    def emit(event: Event) -> None:
        write(json.dumps(asdict(event)) + "\n")

    return emit


def from_json(lines: Iterable[str]) -> Iterable[Event]:
    for line in lines:
        if line.strip():
            yield Event(**json.loads(line))
