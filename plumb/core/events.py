"""Events from long work to whoever shows or keeps them.

Stages, training and generation emit ``Event`` records (kinds in
``records.EVENT_KINDS``) through an ``EventSink``; the CLI draws them, the TUI
charts them, the store keeps the metrics. Across a process boundary an event
is one JSON line: ``to_json(event)`` / ``from_json(line)`` (a training child
writes them, the parent reads them).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from plumb.core.records import EVENT_KINDS, Event, EventSink


def fan_out(*sinks: EventSink | None) -> EventSink:
    live = [s for s in sinks if s is not None]

    def emit(event: Event) -> None:
        for sink in live:
            sink(event)

    return emit


def to_store(store: Any, run_id: int) -> EventSink:  # store: plumb.core.store.Store
    """Persist every metric event of a run, one committed transaction per step."""

    def emit(event: Event) -> None:
        if event.kind == "metric" and event.step is not None and event.values:
            store.log_metrics(run_id, event.step, event.values)

    return emit


def to_json(event: Event) -> str:
    """One line of JSON (no newline inside): the event's fields."""
    return json.dumps(asdict(event), allow_nan=True, separators=(",", ":"))


def from_json(line: str) -> Event:
    """The event a ``to_json`` line describes; ValueError for anything else."""
    obj = json.loads(line)
    if not isinstance(obj, dict) or obj.get("kind") not in EVENT_KINDS:
        raise ValueError(f"not an event line: {line[:80]!r}")
    fields = {k: obj[k] for k in ("kind", "run_id", "step", "total", "values", "message", "stage", "ts") if k in obj}
    return Event(**fields)
