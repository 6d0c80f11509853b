"""The first main job, as a preset of stages: tune the starter model toward a
concise, answer-first style, then show base and tuned answers side by side.

    1. pull    the starter model (SmolLM2-135M-Instruct), once per user
    2. data    a workspace with the bundled preference pairs (train split)
               and held-out prompts (eval split) that training never sees
    3. train   a DPO LoRA adapter on the pairs (pipeline.train, in a child process)
    4. export  the adapter to a GGUF LoRA, served on top of the starter GGUF
    5. compare base (adapter scale 0) and tuned (scale 1) greedy answers on the
               held-out prompts, from one loaded model (pipeline.compare)

Each stage is the same function the CLI calls and skips what an earlier,
interrupted quickstart in the same directory already did. Events (a ``stage``
event per stage, training metrics, progress) go to the caller's sink.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from importlib.resources import files
from pathlib import Path

from plumb.core.dataio import import_records, read_jsonl
from plumb.core.records import Event, EventSink, SamplingParams
from plumb.pipeline.compare import CompareOptions, Row, compare
from plumb.pipeline.export import export_adapter
from plumb.pipeline.pairs import build
from plumb.pipeline.session import Session, open_session
from plumb.pipeline.train import TrainOptions, train

CONSTITUTION = "concise-writer"
PAIRS_SOURCE = "bundled:quickstart_pairs.jsonl"
HELDOUT_SOURCE = "bundled:quickstart_heldout.jsonl"


@dataclass
class Options:
    directory: Path = Path("quickstart")
    pairs: int | None = None  # first N bundled pairs (default: all 150)
    prompts: int | None = None  # first N held-out prompts (default: all 12)
    steps: int | None = None  # optimizer steps (default: `epochs` passes over the pairs)
    epochs: float = 1.0
    batch_size: int = 4
    lr: float = 1e-4
    beta: float = 0.1
    rpo_alpha: float | None = 1.0  # + NLL on the chosen answers, so the policy learns to *write* them
    max_length: int = 384
    max_new_tokens: int = 120
    seed: int = 0
    isolate: bool = True  # train in a child process


@dataclass
class Summary:
    workspace: str
    run_id: int
    adapter: str
    adapter_gguf: str
    pairs: int
    steps: int
    mean_words_base: float
    mean_words_tuned: float
    changed: int
    compared: int
    checks_base: float  # fraction of the constitution's checks passed
    checks_tuned: float
    final_metrics: dict[str, float]
    seconds: dict[str, float] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)


def _import_once(session: Session, source: str, name: str, split: str, limit: int | None) -> None:
    """Import a bundled file unless an earlier quickstart in this workspace already did."""
    if session.store.one("SELECT 1 FROM prompts WHERE source = ? LIMIT 1", (source,)):
        return
    path = Path(str(files("plumb.data") / name))
    import_records(session.store, read_jsonl(path)[:limit], source=source, split=split)


def run(opts: Options, sink: EventSink | None = None) -> Summary:
    from plumb import starter

    emit = sink or (lambda event: None)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        seconds[name] = round(time.perf_counter() - clock, 2)
        clock = time.perf_counter()

    emit(Event("stage", stage="pull", message="the starter model (SmolLM2-135M-Instruct), cached once per user"))
    gguf, hf_dir = starter.pull()
    lap("pull")

    emit(Event("stage", stage="data", message=f"workspace {opts.directory}"))
    with open_session(opts.directory, create=True, constitution=CONSTITUTION) as session:
        _import_once(session, PAIRS_SOURCE, "quickstart_pairs.jsonl", "train", opts.pairs)
        _import_once(session, HELDOUT_SOURCE, "quickstart_heldout.jsonl", "eval", opts.prompts)
        pairs = len(build(session.store).pairs)
        lap("data")

        config = {"steps": opts.steps, "epochs": opts.epochs, "batch_size": opts.batch_size, "lr": opts.lr,
                  "beta": opts.beta, "rpo_alpha": opts.rpo_alpha, "max_length": opts.max_length, "seed": opts.seed}
        trained = train(session, TrainOptions("dpo", policy=f"hf:{hf_dir}", config=config,
                                              constitution=CONSTITUTION, isolate=opts.isolate), emit)
        lap("train")

        adapter_gguf = export_adapter(session, trained.adapter_dir, str(hf_dir), trained.run_id, sink=emit)
        lap("export")

        params = SamplingParams(n=1, temperature=0.0, max_tokens=opts.max_new_tokens, seed=opts.seed)
        result = compare(session, CompareOptions(str(gguf), str(adapter_gguf), "eval", params, CONSTITUTION), emit)
        lap("compare")

        final = {k: trained.metrics[k] for k in ("loss", "rewards/accuracies", "rewards/margins")
                 if k in trained.metrics}
        steps = session.store.metrics(trained.run_id, "loss")
        rows = result.rows
        summary = Summary(
            workspace=str(session.root), run_id=trained.run_id, adapter=trained.adapter_dir,
            adapter_gguf=str(adapter_gguf), pairs=pairs, steps=steps[-1][0] if steps else 0,
            mean_words_base=_mean(len(r.base.split()) for r in rows),
            mean_words_tuned=_mean(len(r.tuned.split()) for r in rows),
            changed=sum(r.changed for r in rows), compared=len(rows), checks_base=result.checks["base"],
            checks_tuned=result.checks["tuned"], final_metrics=final, seconds=seconds, rows=rows,
        )
        report = session.root / "reports" / f"quickstart-run{trained.run_id}.json"
        report.parent.mkdir(exist_ok=True)
        report.write_text(json.dumps(asdict(summary), indent=2))
        session.store.add_artifact("report", str(report), trained.run_id)
    emit(Event("done", values={"mean_words_base": summary.mean_words_base,
                               "mean_words_tuned": summary.mean_words_tuned}))
    return summary


def _mean(values) -> float:
    values = list(values)
    return round(sum(values) / len(values), 1) if values else 0.0
