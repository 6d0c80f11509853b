"""The train stage: a LoRA adapter from the workspace's data (or a JSONL file).

Before anything loads, the method must be registered by a plugin and its
options must validate (unknown key, wrong type, value out of range: an error
naming the key). The rows come from the store by the same rules for every
caller; the run goes through the one lifecycle (``runs.run_lifecycle``) and,
by default, through a child process (``child.run_in_child``), so a crash or an
OOM kill of training leaves the caller running and the run marked failed.

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

A method whose options declare ``DATA = "tasks"`` (GRPO) trains on tasks
instead of pairs: a JSONL file's prompts or the workspace's, with their task
fields; its reward weights (``--reward NAME[=WEIGHT]`` over the config's
``rewards``) are checked against the installed verifiers before any work, and
the workspace constitution's checks travel with the run as held-out signals.
Its ``OUT/rollouts.jsonl`` is stored after the run however it ended.
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
from plumb.core.options import validate_options
from plumb.core.records import Event, EventSink, RunResult, RunSpec
from plumb.core.store import Provenance, Store
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
    tasks: str | None = None  # grpo: a JSONL file of tasks (default: the workspace's prompts)
    rewards: list[str] = field(default_factory=list)  # grpo: NAME[=WEIGHT] (over the config's ``rewards``)


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
    """The method's entry and its validated options (defaults filled in), before any work; for a method
    that trains on tasks, its reward weights too (a weight naming a missing verifier is an error here)."""
    entry = session.pm.registry.check_method(opts.method)
    config = {**opts.config, "method": opts.method}
    if getattr(entry.impl, "DATA", None) == "tasks":
        config["rewards"] = reward_weights(session, opts)[0]
    return validate_options(entry, config)


# -- methods that train on tasks (GRPO): prompts with what verifiers need, reward weights, rollouts ----


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


def _reward_model_dir(session: Session, ref: str) -> str:
    """A trained reward model by path, or by name under the workspace's adapters/ (its run directory)."""
    for base in (Path(ref).expanduser(), session.ws.adapters_dir / ref):
        for d in (base, base / "adapter"):
            if (d / "reward_model.json").is_file():
                return str(d.resolve())
    found = sorted(p.parent.parent.name for p in session.ws.adapters_dir.glob("*/adapter/reward_model.json"))
    raise PlumbError(f"--reward reward-model:{ref}: no reward model there (a directory `plumb train reward-model` "
                     f"wrote). Reward models in this workspace: {', '.join(found) or 'none'}.", exit_code=2)


def reward_weights(session: Session, opts: TrainOptions) -> tuple[dict[str, float], str | None]:
    """{verifier: weight} from the run config's ``rewards`` and ``--reward NAME[=WEIGHT]``, every name an
    installed verifier; ``reward-model:PATH_OR_NAME`` is the ``reward-model`` verifier with that model."""
    from plumb.core.rewards import parse_weights, validate_weights

    weights = {**parse_weights(opts.config.get("rewards") or {}), **parse_weights(list(opts.rewards))}
    model = None
    for name in [n for n in weights if n.startswith("reward-model:")]:
        model = _reward_model_dir(session, name.split(":", 1)[1])
        weights["reward-model"] = weights.pop(name)
    if not weights:
        raise PlumbError(f"{opts.method} needs rewards to optimize: --reward NAME[=WEIGHT] (repeatable), or rewards = "
                         "{NAME = WEIGHT} in the run config. `plumb plugins` lists the verifiers.", exit_code=2)
    validate_weights(session.pm, weights)
    return weights, model


def tasks_for(session: Session, opts: TrainOptions, const: Any,
              options: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training tasks, held-out tasks); fills in the options' reward weights and the constitution's checks."""
    weights, model = reward_weights(session, opts)
    src = opts.tasks or (opts.data if opts.data != "workspace" else None)
    rows = task_rows_from_file(src) if src else task_rows(session.store, "train")
    held = (task_rows_from_file(opts.eval_data) if opts.eval_data else [] if src
            else task_rows(session.store, "eval"))
    if not rows:
        raise PlumbError(f"no tasks to train {opts.method} on: pass --tasks FILE.jsonl (prompts with answer, tests, "
                         "schema or meta) or import prompts (`plumb data import FILE.jsonl`).", exit_code=2)
    for row in rows + held if model else []:
        row["meta"] = {"reward_model": model, **(row.get("meta") or {})}
    options["rewards"] = weights
    options["checks"] = [{"principle": p.id, "verifier": c.verifier, "params": dict(c.params)}
                         for p in (const.principles if const is not None else []) for c in p.checks]
    if options.get("judge"):  # the judge reads the constitution; checked here, before the child starts
        if const is None:
            raise PlumbError(f"{opts.method}: judge = {options['judge']!r} needs a constitution to judge against; "
                             "run it in a workspace (plumb init) or drop the judge.", exit_code=2)
        session.context().spec(options["judge"])
        options["constitution"] = const.model_dump(mode="json")
    return rows, held


def ingest_rollouts(store: Store, run_id: int, out_dir: str, prov: Provenance) -> int:
    """Store a run's ``OUT/rollouts.jsonl`` lines (this run's only, of steps not stored yet: a resumed run
    has them from its earlier attempt): a sample of kind 'rollout' with its provenance, its rewards and its
    rollout row (step, group, weighted reward, advantage)."""
    from plumb.core.records import Reward

    path = Path(out_dir) / "rollouts.jsonl"
    if not path.is_file():
        return 0
    n = 0
    stored = {r[0] for r in store.query("SELECT DISTINCT step FROM rollouts WHERE run_id = ?", (run_id,))}
    with store.transaction():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                r = json.loads(line)
            except ValueError:  # a line cut short by a kill
                continue
            if r.get("run_id") != run_id or r.get("step") in stored:
                continue
            pid = store.add_prompt(r["messages"], source=f"{prov.plugin} run {run_id}")
            p = Provenance(prov.model, r["sampler"], {**r["params"], "step": r["step"]}, prov.plugin,
                           prov.plugin_version, prov.constitution_hash)
            sid = store.add_sample(pid, r["completion"], p, kind="rollout", finish_reason=r["finish_reason"])
            for w in r["rewards"]:
                detail = f"[{w['check']}] {w['detail']}" if w.get("check") else w["detail"]
                store.add_reward(sid, Reward(w["name"], w["value"], detail, w["status"], w["seconds"]), p)
            store.add_rollout(run_id, r["step"], r["group"], sid, r["reward"] or 0.0, r["advantage"])
            n += 1
    return n


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
    options = validate(session, opts)
    spec = session.model("train", opts.policy)
    const = session.constitution(opts.constitution) if session.ws.config or opts.constitution else None
    on_tasks = getattr(session.pm.registry.methods[opts.method].impl, "DATA", None) == "tasks"
    if on_tasks:
        rows, eval_rows = tasks_for(session, opts, const, options)
    else:
        rows = (rows_for(session.store, opts.method, opts.pairs_by) if opts.data == "workspace"
                else rows_from_file(opts.data, opts.method))
        if not rows:
            what = {"kto": "labelled completions", "sft": "answers (references, revisions or judged winners)"}
            raise PlumbError(f"no {what.get(opts.method, 'judged preference pairs')} to train {opts.method} on "
                             f"in {opts.data}; import some (`plumb data import FILE.jsonl`) or pass --data FILE.",
                             exit_code=2)
        eval_rows = []
        if opts.eval_data:
            eval_rows = rows_from_file(opts.eval_data, "dpo") or rows_from_file(opts.eval_data, "sft")
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
            result = _optimize(session, run, emit, isolate=False)
            return Trained(None, opts.out_dir, result.adapter_dir, result.metrics, result.artifacts)

    session.store.reap_runs()  # a run orphaned since the workspace was opened is not "running"
    earlier = None if opts.fresh or opts.out_dir else _earlier(session.store, key)
    if earlier is not None and earlier["status"] == "running":
        raise PlumbError(f"run {earlier['id']} is training this right now (process {earlier['owner_pid']}, into "
                         f"{earlier['out_dir']}); wait for it or stop it, or pass --fresh to train a second copy.",
                         exit_code=2)
    if earlier is not None and earlier["status"] == "done" and (Path(earlier["out_dir"]) / "adapter").is_dir():
        artifacts = [(a["kind"], a["path"]) for a in session.store.query(
            "SELECT kind, path FROM artifacts WHERE run_id = ? ORDER BY id", (earlier["id"],))]
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
            trim_rollouts(out_dir, *resume)
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
            result = _optimize(session, run, events, opts.isolate)
        finally:  # rollouts are kept whether the run finished, failed or was interrupted
            if on_tasks:
                _ingest(session, handle.run_id, out_dir, prov, emit)
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


def trim_rollouts(out_dir: str, run_id: int, from_step: int) -> None:
    """Before run ``run_id`` resumes at ``from_step``: drop its ``OUT/rollouts.jsonl`` lines of later steps
    (they are sampled again), so the file holds each step once."""
    path = Path(out_dir) / "rollouts.jsonl"
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except ValueError:  # a line cut short by a kill
            continue
        if r.get("run_id") != run_id or r.get("step", 0) <= from_step:
            keep.append(line + "\n")
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(keep), encoding="utf-8")
    tmp.replace(path)


def _store_file(session: Session) -> str | None:
    """The store's database file, or None for an in-memory store (a scratch session)."""
    path = str(session.store.path)
    return None if path in (":memory:", "") else str(Path(path).resolve())


def _ingest(session: Session, run_id: int, out_dir: str, prov: Provenance, emit: EventSink) -> None:
    try:
        n = ingest_rollouts(session.store, run_id, out_dir, prov)
    except Exception as exc:  # never hide the run's own outcome behind a bookkeeping error
        emit(Event("log", run_id, message=f"could not store the rollouts of {out_dir}: {exc}"))
        return
    emit(Event("log", run_id, message=f"{n} rollouts stored"))


def _optimize(session: Session, run: RunSpec, events: EventSink, isolate: bool) -> RunResult:
    if isolate:
        from plumb.pipeline.child import run_in_child

        return run_in_child(run, events, session.cancel, session.ws.plugin_files,
                            str(session.root) if session.ws.config else None, _store_file(session))
    result = session.pm.hook.plumb_optimize(ctx=session.context(events, run.run_id), method=run.method, run=run)
    if result is None:
        raise PlumbError(f"plugin {session.pm.registry.methods[run.method].plugin} registers {run.method!r} "
                         "but its plumb_optimize did not answer.")
    return result
