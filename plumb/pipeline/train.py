"""The train stage: a LoRA adapter from the workspace's data (or a JSONL file).

Before anything loads, the method must be registered by a plugin (a method
object, ``core/method.py``) and its options must validate (unknown key, wrong
type, value out of range: an error naming the key). The stage asks the method
object, never its name: the shape of its rows (read from the store by the same
rules for every caller, or from a JSONL file), what it configures and prepares
before a run, how it trains, and what it ingests after. The run goes through
the one lifecycle (``runs.run_lifecycle``) and, by default, through a child
process (``child.run_in_child``), so a crash or an OOM kill of training leaves
the caller running and the run marked failed.

A rerun skips what is done: a finished run with the same method, options,
policy and data returns its adapter at once; an interrupted or failed one with
checkpoints is resumed into the same directory *and the same run row* (one
training job, its metrics continued from the checkpoint's step; see
``runs.run_lifecycle``). A run with the same key that is still running in a
live process is refused. ``fresh`` trains anew.

Under ``torchrun`` / ``accelerate launch`` (``WORLD_SIZE`` > 1) every rank runs
this stage and trains in its own process (no child: the launcher supervises the
ranks), into the ``out_dir`` every rank is given; rank 0 alone touches the store
(one run row, its metrics), the other ranks train beside it and record nothing
(``plumb/train/distributed.py``).

In a child process the child writes the run's metrics to the store itself
(it runs the loop, and outlives a killed parent long enough to checkpoint), so
every step up to its last checkpoint is recorded however the parent ended.

A method on tasks (GRPO) trains on prompts with their task fields: a JSONL
file's or the workspace's; what else it needs (reward weights, the
constitution's checks, what it left in its run directory) is its own business,
done in its ``configure``, ``prepare``, ``resume`` and ``ingest``.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from plumb import __version__
from plumb.core.errors import PlumbError
from plumb.core.events import fan_out, to_store
from plumb.core.method import DATA_SHAPES, Method, Setup
from plumb.core.options import check_options
from plumb.core.records import Event, EventSink, RunResult, RunSpec
from plumb.core.store import Provenance, Store
from plumb.pipeline.queries import run_artifacts
from plumb.pipeline.runs import run_lifecycle
from plumb.pipeline.session import Session
from plumb.train.distributed import world

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
    pairs_by: str = "both"  # whose verdicts make pairs (pipeline.pairs.build)
    tasks: str | None = None  # a method on tasks: a JSONL file of them (default: the workspace's prompts)
    rewards: list[str] = field(default_factory=list)  # NAME[=WEIGHT] for the method (over the config's ``rewards``)


@dataclass
class Trained:
    run_id: int | None
    out_dir: str
    adapter_dir: str
    metrics: dict[str, float]
    artifacts: list[tuple[str, str]]
    skipped: bool = False  # an identical finished run was reused


def rows_for(store: Store, shape: str, by: str = "both") -> list[dict[str, Any]]:
    """Training rows of ``shape`` (pairs, sft or labels), by the one rule (pipeline.pairs.training_rows)."""
    from plumb.pipeline.pairs import training_rows

    return training_rows(store, shape, by)


def rows_from_file(path: str, shape: str) -> list[dict[str, Any]]:
    """A JSONL file's rows of ``shape`` by the store's rules (imported into an in-memory store)."""
    from plumb.core.dataio import import_file

    with Store(":memory:") as store:
        import_file(store, path)
        return rows_for(store, shape)


def task_rows(store: Store, split: str = "train") -> list[dict[str, Any]]:
    """The workspace's prompts of ``split``, each with its task fields (tests / answer / schema / meta)."""
    return [{"messages": json.loads(p["messages"]), **json.loads(p["task"] or "{}")} for p in store.prompts(split)]


def task_rows_from_file(path: str) -> list[dict[str, Any]]:
    """Every distinct prompt of a JSONL file (any shape's prompt) with its task fields."""
    from plumb.core.dataio import read_jsonl

    rows: dict[str, dict[str, Any]] = {}
    for r in read_jsonl(path):
        rows.setdefault(json.dumps(r.messages, sort_keys=True), {"messages": r.messages, **(r.task or {})})
    return list(rows.values())


def read_rows(session: Session, opts: TrainOptions, shape: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training rows, held-out rows) of the method's ``shape``, from the workspace or the files given."""
    if shape == "tasks":
        src = opts.tasks or (opts.data if opts.data != "workspace" else None)
        rows = task_rows_from_file(src) if src else task_rows(session.store, "train")
        held = (task_rows_from_file(opts.eval_data) if opts.eval_data else [] if src
                else task_rows(session.store, "eval"))
        if not rows:
            raise PlumbError(f"no tasks to train {opts.method} on: pass --tasks FILE.jsonl (prompts with answer, "
                             "tests, schema or meta) or import prompts (`plumb data import FILE.jsonl`).", exit_code=2)
        return rows, held
    rows = (rows_for(session.store, shape, opts.pairs_by) if opts.data == "workspace"
            else rows_from_file(opts.data, shape))
    if not rows:
        raise PlumbError(f"no {DATA_SHAPES[shape]} to train {opts.method} on in {opts.data}; import some "
                         "(`plumb data import FILE.jsonl`) or pass --data FILE.", exit_code=2)
    held = (rows_from_file(opts.eval_data, "pairs") or rows_from_file(opts.eval_data, "sft")) if opts.eval_data else []
    return rows, held


def method_of(session: Session, name: str) -> Method:
    """The method object registered as ``name`` (an error listing the installed ones if none is)."""
    return session.pm.registry.check_method(name).impl


def _setup(session: Session, opts: TrainOptions, const: Any = None) -> Setup:
    return Setup(session.context(), dict(opts.config), list(opts.rewards), const, session.ws.adapters_dir)


def validate(session: Session, opts: TrainOptions) -> dict[str, Any]:
    """The method's options as it configures them from ``opts`` (GRPO: its reward weights), validated with
    defaults filled in, before any work: a bad key, value or reward is an error here."""
    method = method_of(session, opts.method)
    config = method.configure({**opts.config, "method": opts.method}, _setup(session, opts))
    return check_options(method.name, method.options, config)


def _key(method: str, options: dict[str, Any], policy: str, rows: list[dict[str, Any]]) -> str:
    same = {k: v for k, v in options.items() if k not in ("resume", "gguf", "time_limit_s")}  # a deadline is not data
    blob = json.dumps([method, same, policy, rows], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _earlier(store: Store, key: str, out_dir: str | None = None) -> Any:
    if out_dir is not None:
        return store.one("SELECT * FROM runs WHERE json_extract(config, '$.key') = ? AND out_dir = ?"
                         " ORDER BY id DESC LIMIT 1", (key, out_dir))
    return store.one("SELECT * FROM runs WHERE json_extract(config, '$.key') = ? ORDER BY id DESC LIMIT 1", (key,))


def train(session: Session, opts: TrainOptions, sink: EventSink | None = None) -> Trained:
    emit = sink or (lambda event: None)
    method = method_of(session, opts.method)
    options = validate(session, opts)
    spec = session.model("train", opts.policy)
    const = session.constitution(opts.constitution) if session.ws.config or opts.constitution else None
    rows, eval_rows = read_rows(session, opts, method.data)
    method.prepare(options, rows, eval_rows, _setup(session, opts, const))
    key = _key(opts.method, options, str(spec), rows)
    ranks = world()
    if ranks.size > 1:  # under torchrun: every rank trains in its own process, rank 0 alone records the run
        if not opts.out_dir:
            raise PlumbError(f"under torchrun (WORLD_SIZE={ranks.size}) pass --out DIR: every rank trains into, "
                             "and resumes from, the same directory.", exit_code=2)
        opts = replace(opts, isolate=False)
        if not ranks.main:
            from plumb.core import checkpoints

            resumes = options.get("resume") or (checkpoints.latest(opts.out_dir) is not None and not opts.fresh)
            run = RunSpec(opts.method, spec, rows, opts.out_dir, {**options, "resume": resumes}, None, eval_rows)
            result = _optimize(session, method, run, emit, isolate=False)
            return Trained(None, opts.out_dir, result.adapter_dir, result.metrics, result.artifacts)

    session.store.reap_runs()  # a run orphaned since the workspace was opened is not "running"
    earlier = None if opts.fresh or opts.out_dir else _earlier(session.store, key)
    if earlier is not None and earlier["status"] == "running":
        raise PlumbError(f"run {earlier['id']} is training this right now (process {earlier['owner_pid']}, into "
                         f"{earlier['out_dir']}); wait for it or stop it, or pass --fresh to train a second copy.",
                         exit_code=2)
    if earlier is not None and earlier["status"] == "done" and (Path(earlier["out_dir"]) / "adapter").is_dir():
        artifacts = run_artifacts(session.store, earlier["id"])
        emit(Event("log", earlier["id"], message=f"run {earlier['id']} already trained this; reusing its adapter"))
        return Trained(earlier["id"], earlier["out_dir"], str(Path(earlier["out_dir"]) / "adapter"),
                       json.loads(earlier["final_metrics"] or "{}"), artifacts, skipped=True)
    out_dir = opts.out_dir or (earlier["out_dir"] if earlier is not None else
                               _new_dir(session.ws.adapters_dir / f"{opts.method}-{time.strftime('%Y%m%d-%H%M%S')}"))
    from plumb.core import checkpoints

    last = checkpoints.latest(out_dir)
    resume = None
    if last is not None and not opts.fresh:
        options["resume"] = True
        again = earlier if earlier is not None else _earlier(session.store, key, out_dir)
        if again is not None and again["status"] in ("interrupted", "failed") and again["out_dir"] == out_dir:
            resume = (again["id"], checkpoints.step_of(last))
            method.resume(out_dir, *resume)
            emit(Event("log", again["id"], message=f"continuing run {again['id']} ({again['status']}) from {last}"))
    elif options.get("resume"):
        raise PlumbError(f"--resume: no checkpoint in {Path(out_dir) / 'checkpoints'}; start without --resume.",
                         exit_code=2)

    entry = session.pm.registry.methods[opts.method]
    prov = Provenance(model=str(spec), backend=spec.backend, params=options, plugin=entry.plugin,
                      plugin_version=session.pm.version_of(entry.plugin),
                      constitution_hash=const.hash if const is not None else None)
    record = {**options, "key": key, "data": opts.tasks or opts.data, "policy": str(spec), "rows": len(rows)}
    emit(Event("stage", stage="train", message=f"{opts.method} on {len(rows)} rows, {spec}"))
    with run_lifecycle(session.store, opts.method, record, out_dir, prov, resume) as handle:
        run = RunSpec(opts.method, spec, rows, out_dir, options, handle.run_id, eval_rows)
        in_child = opts.isolate and _store_file(session) is not None  # then the child stores the metrics
        events = emit if in_child else fan_out(to_store(session.store, handle.run_id), emit)
        try:
            result = _optimize(session, method, run, events, opts.isolate)
        finally:  # what the run left is kept whether it finished, failed or was interrupted
            _ingest(session, method, handle.run_id, out_dir, prov, emit)
        handle.finish(result.metrics, result.artifacts)
    return Trained(handle.run_id, out_dir, result.adapter_dir, result.metrics, result.artifacts)


def _new_dir(base: Path) -> str:
    """``base``, or ``base-2``, ``base-3``... when a run started in the same second already took it (its
    checkpoints must never be resumed by another run)."""
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return str(path)


def _store_file(session: Session) -> str | None:
    """The store's database file, or None for an in-memory store (a scratch session)."""
    path = str(session.store.path)
    return None if path in (":memory:", "") else str(Path(path).resolve())


def _ingest(session: Session, method: Method, run_id: int, out_dir: str, prov: Provenance, emit: EventSink) -> None:
    try:
        line = method.ingest(session.store, run_id, out_dir, prov)
    except Exception as exc:  # never hide the run's own outcome behind a bookkeeping error
        emit(Event("log", run_id, message=f"could not store what run {run_id} left in {out_dir}: {exc}"))
        return
    if line:
        emit(Event("log", run_id, message=line))


def _optimize(session: Session, method: Method, run: RunSpec, events: EventSink, isolate: bool) -> RunResult:
    if isolate:
        from plumb.pipeline.child import run_in_child

        return run_in_child(run, events, session.cancel, session.ws.plugin_files,
                            str(session.root) if session.ws.config else None, _store_file(session))
    return method.train(run, session.context(events, run.run_id))
