"""The train stage: a LoRA adapter from the workspace's data (or a JSONL file).

Before anything loads, the method must be registered by a plugin and its
options must validate (unknown key, wrong type, value out of range: an error
naming the key). The rows come from the store by the same rules for every
caller; the run goes through the one lifecycle (``runs.run_lifecycle``) and,
by default, through a child process (``child.run_in_child``), so a crash or an
OOM kill of training leaves the caller running and the run marked failed.

A rerun skips what is done: a finished run with the same method, options,
policy and data returns its adapter at once; an interrupted or failed one with
checkpoints is resumed into the same directory. ``fresh`` trains anew.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plumb import __version__
from plumb.core.errors import PlumbError
from plumb.core.events import fan_out, to_store
from plumb.core.options import validate_options
from plumb.core.records import Event, EventSink, RunResult, RunSpec
from plumb.core.store import Provenance, Store
from plumb.pipeline.runs import run_lifecycle
from plumb.pipeline.session import Session

NOT_OPTIONS = ("method",)  # set by the stage, not by the person


@dataclass
class TrainOptions:
    method: str
    policy: str | None = None  # model spec; default: plumb.toml's [models] train
    data: str = "workspace"  # "workspace" or a JSONL file
    eval_data: str | None = None  # a held-out JSONL file
    config: dict[str, Any] = field(default_factory=dict)  # the method's options
    out_dir: str | None = None  # default: adapters/METHOD-TIME
    fresh: bool = False  # train anew even if an identical run finished
    isolate: bool = True  # train in a child process
    constitution: str | None = None  # recorded as the run's provenance


@dataclass
class Trained:
    run_id: int | None
    out_dir: str
    adapter_dir: str
    metrics: dict[str, float]
    artifacts: list[tuple[str, str]]
    skipped: bool = False  # an identical finished run was reused


def rows_for(store: Store, method: str, by: str = "both") -> list[dict[str, Any]]:
    """Training rows in the method's shape, by the one rule (pipeline.pairs.training_rows)."""
    from plumb.pipeline.pairs import training_rows

    return training_rows(store, method, by)


def rows_from_file(path: str, method: str) -> list[dict[str, Any]]:
    """A JSONL file's rows by the store's rules (imported into an in-memory store)."""
    from plumb.core.dataio import import_file

    with Store(":memory:") as store:
        import_file(store, path)
        return rows_for(store, method)


def validate(session: Session, opts: TrainOptions) -> dict[str, Any]:
    """The method's entry and its validated options (defaults filled in), before any work."""
    entry = session.pm.registry.check_method(opts.method)
    return validate_options(entry, {**opts.config, "method": opts.method})


def _key(method: str, options: dict[str, Any], policy: str, rows: list[dict[str, Any]]) -> str:
    same = {k: v for k, v in options.items() if k not in ("resume", "gguf")}
    blob = json.dumps([method, same, policy, rows], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _earlier(store: Store, key: str) -> Any:
    return store.one("SELECT * FROM runs WHERE json_extract(config, '$.key') = ? ORDER BY id DESC LIMIT 1", (key,))


def train(session: Session, opts: TrainOptions, sink: EventSink | None = None) -> Trained:
    emit = sink or (lambda event: None)
    options = validate(session, opts)
    spec = session.model("train", opts.policy)
    const = session.constitution(opts.constitution) if session.ws.config or opts.constitution else None
    rows = rows_for(session.store, opts.method) if opts.data == "workspace" else rows_from_file(opts.data, opts.method)
    if not rows:
        what = {"kto": "labelled completions", "sft": "answers (references, revisions or judged winners)"}
        raise PlumbError(f"no {what.get(opts.method, 'judged preference pairs')} to train {opts.method} on "
                         f"in {opts.data}; import some (`plumb data import FILE.jsonl`) or pass --data FILE.",
                         exit_code=2)
    eval_rows = []
    if opts.eval_data:
        eval_rows = rows_from_file(opts.eval_data, "dpo") or rows_from_file(opts.eval_data, "sft")
    key = _key(opts.method, options, str(spec), rows)

    earlier = None if opts.fresh or opts.out_dir else _earlier(session.store, key)
    if earlier is not None and earlier["status"] == "done" and (Path(earlier["out_dir"]) / "adapter").is_dir():
        artifacts = [(a["kind"], a["path"]) for a in session.store.query(
            "SELECT kind, path FROM artifacts WHERE run_id = ? ORDER BY id", (earlier["id"],))]
        emit(Event("log", earlier["id"], message=f"run {earlier['id']} already trained this; reusing its adapter"))
        return Trained(earlier["id"], earlier["out_dir"], str(Path(earlier["out_dir"]) / "adapter"),
                       json.loads(earlier["final_metrics"] or "{}"), artifacts, skipped=True)
    out_dir = opts.out_dir or (earlier["out_dir"] if earlier is not None else
                               str(session.ws.adapters_dir / f"{opts.method}-{time.strftime('%Y%m%d-%H%M%S')}"))
    from plumb.train import checkpoint  # light: torch is imported inside its functions only

    if checkpoint.latest(out_dir) is not None and not opts.fresh:
        options["resume"] = True
    elif options.get("resume"):
        raise PlumbError(f"--resume: no checkpoint in {Path(out_dir) / 'checkpoints'}; start without --resume.",
                         exit_code=2)

    entry = session.pm.registry.methods[opts.method]
    prov = Provenance(model=str(spec), backend=spec.backend, params=options, plugin=entry.plugin,
                      plugin_version=session.pm.version_of(entry.plugin),
                      constitution_hash=const.hash if const is not None else None)
    record = {**options, "key": key, "data": opts.data, "policy": str(spec), "rows": len(rows)}
    emit(Event("stage", stage="train", message=f"{opts.method} on {len(rows)} rows, {spec}"))
    with run_lifecycle(session.store, opts.method, record, out_dir, prov) as handle:
        run = RunSpec(opts.method, spec, rows, out_dir, options, handle.run_id, eval_rows)
        events = fan_out(to_store(session.store, handle.run_id), emit)
        result = _optimize(session, run, events, opts.isolate)
        handle.finish(result.metrics, result.artifacts)
    return Trained(handle.run_id, out_dir, result.adapter_dir, result.metrics, result.artifacts)


def _optimize(session: Session, run: RunSpec, events: EventSink, isolate: bool) -> RunResult:
    if isolate:
        from plumb.pipeline.child import run_in_child

        return run_in_child(run, events, session.cancel, session.ws.plugin_files,
                            str(session.root) if session.ws.config else None)
    result = session.pm.hook.plumb_optimize(ctx=session.context(events, run.run_id), method=run.method, run=run)
    if result is None:
        raise PlumbError(f"plugin {session.pm.registry.methods[run.method].plugin} registers {run.method!r} "
                         "but its plumb_optimize did not answer.")
    return result
