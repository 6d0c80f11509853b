"""The first main job: tune the starter model toward a concise, answer-first
style, then show base and tuned answers side by side.

    1. pull   the starter model (SmolLM2-135M-Instruct), once per user
    2. data   a workspace with the bundled preference pairs (train split)
              and held-out prompts (eval split) that training never sees
    3. train  a DPO LoRA adapter on the pairs, with live progress
    4. export the adapter to a GGUF LoRA, served on top of the starter GGUF
    5. compare base (adapter scale 0) and tuned (scale 1) greedy answers on
              the held-out prompts, from one loaded model: word counts,
              the constitution's checks, how many answers changed

Everything goes through the hooks (``plumb_optimize``, ``plumb_generate``,
``plumb_reward``) and every row lands in the workspace store with provenance.
Nothing here imports torch or llama_cpp; the plugins do, when called.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, Callable, Protocol

from plumb import __version__
from plumb.core.dataio import import_records, read_jsonl
from plumb.core.errors import PlumbError
from plumb.core.events import fan_out, to_store
from plumb.core.records import Chat, Completion, Event, ModelSpec, Pair, Run, SamplingParams
from plumb.core.store import Provenance
from plumb.core.workspace import CONFIG, Workspace, init_workspace, open_workspace
from plumb.plugins.verifiers import check_completion, words

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


class Reporter(Protocol):
    def stage(self, name: str, detail: str = "") -> None: ...

    def event(self, event: Event) -> None: ...


@dataclass
class Row:
    prompt: str
    base: str
    tuned: str

    @property
    def changed(self) -> bool:
        return self.base.strip() != self.tuned.strip()


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


def _bundled(name: str) -> Path:
    return Path(str(files("plumb.data") / name))


def _timed(seconds: dict[str, float], name: str) -> Callable[[], None]:
    start = time.perf_counter()

    def done() -> None:
        seconds[name] = round(time.perf_counter() - start, 2)

    return done


def _workspace(directory: Path) -> Workspace:
    if (directory / CONFIG).exists():
        return open_workspace(directory)
    return init_workspace(directory, constitution=CONSTITUTION)


def _import_once(ws: Workspace, source: str, path: Path, split: str, limit: int | None) -> None:
    """Import a bundled file unless an earlier quickstart in this workspace already did."""
    with ws.store() as store:
        if store.db.execute("SELECT 1 FROM prompts WHERE source = ? LIMIT 1", (source,)).fetchone():
            return
        import_records(store, read_jsonl(path)[:limit], source=source, split=split)


def run(opts: Options, reporter: Reporter) -> Summary:
    from plumb import starter

    seconds: dict[str, float] = {}

    reporter.stage("pull", "the starter model (SmolLM2-135M-Instruct), cached once per user")
    done = _timed(seconds, "pull")
    gguf, hf_dir = starter.pull()
    done()

    reporter.stage("data", f"workspace {opts.directory}")
    done = _timed(seconds, "data")
    ws = _workspace(opts.directory)
    constitution = ws.constitution(CONSTITUTION)
    pm = ws.plugin_manager()
    _import_once(ws, PAIRS_SOURCE, _bundled("quickstart_pairs.jsonl"), "train", opts.pairs)
    _import_once(ws, HELDOUT_SOURCE, _bundled("quickstart_heldout.jsonl"), "eval", opts.prompts)
    store = ws.store()
    store.add_constitution(constitution.hash, constitution.name, constitution.version,
                           constitution.canonical_json())
    pairs = [Pair(Chat.from_dicts(p["messages"]), p["chosen"], p["rejected"]) for p in store.preference_pairs()]
    heldout = store.prompts(split="eval")
    done()

    reporter.stage("train", f"DPO LoRA on {len(pairs)} pairs")
    done = _timed(seconds, "train")
    config = {"steps": opts.steps, "epochs": opts.epochs, "batch_size": opts.batch_size, "lr": opts.lr,
              "beta": opts.beta, "rpo_alpha": opts.rpo_alpha, "max_length": opts.max_length, "seed": opts.seed}
    policy = ModelSpec("hf", str(hf_dir))
    prov = Provenance(model=str(policy), backend="hf", params=config, plugin="plumb.quickstart",
                      plugin_version=__version__, constitution_hash=constitution.hash)
    out_dir = ws.adapters_dir / f"quickstart-{int(time.time())}"
    run_id = store.start_run("dpo", config, str(out_dir), prov)
    job = Run(method="dpo", policy=policy, data=pairs, out_dir=str(out_dir), config=config, run_id=run_id,
              emit=fan_out(to_store(store, run_id), reporter.event))
    try:
        result = pm.hook.plumb_optimize(method="dpo", run=job)
        if result is None:
            raise PlumbError("no installed plugin trains method 'dpo' (see `plumb plugins`).")
    except BaseException as exc:
        store.finish_run(run_id, "failed", error=str(exc))
        raise
    store.add_artifact("adapter", result.adapter_dir, run_id=run_id)
    done()

    reporter.stage("export", "adapter -> GGUF LoRA for llama.cpp")
    done = _timed(seconds, "export")
    from plumb.export.lora_to_gguf import export_lora

    adapter_gguf = export_lora(result.adapter_dir, Path(result.adapter_dir) / "adapter.gguf", base_dir=hf_dir)
    store.add_artifact("gguf-lora", str(adapter_gguf), run_id=run_id)
    store.finish_run(run_id, "done")
    done()

    reporter.stage("compare", f"base vs tuned on {len(heldout)} held-out prompts (greedy)")
    done = _timed(seconds, "compare")
    chats = [Chat.from_dicts(json.loads(p["messages"])) for p in heldout]
    params = SamplingParams(n=1, temperature=0.0, max_tokens=opts.max_new_tokens, seed=opts.seed)
    answers: dict[str, list[Completion]] = {}
    checks: dict[str, float] = {}
    for side, scale in (("base", 0.0), ("tuned", 1.0)):
        spec = ModelSpec("llamacpp", str(gguf), lora=str(adapter_gguf), lora_scale=scale)
        batches, plugin, version = pm.generate(spec, chats, params)
        answers[side] = [b[0] for b in batches]
        sample_prov = Provenance(model=f"{spec}@{scale:g}", backend=spec.backend, params=params.to_dict(),
                                 plugin=plugin, plugin_version=version, constitution_hash=constitution.hash)
        passed = total = 0
        with store.transaction():
            for prompt, completion in zip(heldout, answers[side]):
                store.add_sample(prompt["id"], completion.text, sample_prov, kind="sample",
                                 finish_reason=completion.finish_reason)
                results = check_completion(pm, constitution, completion)
                passed += sum(r.value for _, r in results)
                total += len(results)
        checks[side] = passed / total if total else float("nan")
    done()

    rows = [Row(p["text"], b.text, t.text) for p, b, t in zip(heldout, answers["base"], answers["tuned"])]
    final, steps = {}, 0
    for key in ("loss", "rewards/accuracies", "rewards/margins"):
        series = store.metrics(run_id, key)
        if series:
            steps, final[key] = series[-1]
    summary = Summary(
        workspace=str(ws.root), run_id=run_id, adapter=result.adapter_dir, adapter_gguf=str(adapter_gguf),
        pairs=len(pairs), steps=steps,
        mean_words_base=_mean(words(r.base) for r in rows), mean_words_tuned=_mean(words(r.tuned) for r in rows),
        changed=sum(r.changed for r in rows), compared=len(rows),
        checks_base=checks["base"], checks_tuned=checks["tuned"], final_metrics=final, seconds=seconds, rows=rows,
    )
    report = ws.root / "reports" / f"quickstart-run{run_id}.json"
    report.parent.mkdir(exist_ok=True)
    report.write_text(json.dumps(asdict(summary), indent=2))
    store.add_artifact("report", str(report), run_id=run_id)
    store.close()
    return summary


def _mean(values: Any) -> float:
    values = list(values)
    return round(sum(values) / len(values), 1) if values else 0.0
