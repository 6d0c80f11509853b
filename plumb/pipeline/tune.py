"""`plumb tune`: from a constitution to a tuned model, measured — the main job.

The stages, each the same function the CLI and the TUI call, each skipping on
a rerun what an interrupted run already finished:

    1. prompts   the bundled everyday requests (or the workspace's own), split into
                 train, dev (checkpoint choice) and eval (held out, never trained on)
    2. sample    k answers per train prompt through llama.cpp
    3. critique  CAI critique and revision rounds against the constitution's principles
    4. judge     every pair in both orders by the AI judge, and by the principles' checks
    5. pairs     which verdicts count (``pairs``): the judge is trusted only where this
                 run measured it agreeing with the checks better than chance
    6. train     a DPO LoRA (RPO term), checkpoints kept; the one that passes the most
                 checks on the dev prompts ships, not simply the last
    7. export    the chosen adapter as a GGUF LoRA on the same base GGUF
    8. evaluate  base vs tuned on the eval prompts from one loaded model
    9. report    DIR/report.md, DIR/report.json, PNG charts

``budget_minutes`` scales how many prompts are sampled, critiqued and judged
(the default sizes fit 10 minutes on a 2-core CPU with the starter cached).
"""

from __future__ import annotations

import math
import shutil
import threading
import time
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from plumb.core.dataio import import_records, read_jsonl
from plumb.core.errors import PlumbError
from plumb.core.records import Event, EventSink, SamplingParams
from plumb.pipeline.agreement import agreement
from plumb.pipeline.compare import CompareOptions, compare
from plumb.pipeline.critique import CritiqueOptions, critique
from plumb.pipeline.evaluate import EvalOptions, evaluate
from plumb.pipeline.export import export_adapter
from plumb.pipeline.judge import CHECKS, JudgeOptions, judge
from plumb.pipeline.pairs import build
from plumb.pipeline.sample import SampleOptions, sample
from plumb.pipeline.session import Session, open_session
from plumb.pipeline.train import TrainOptions, train

PROMPTS_SOURCE = "bundled:tune_prompts.jsonl"
MIN_PAIRS = 8


@dataclass
class Sizes:
    """How much data each stage makes; ``for_budget`` scales them with the time budget.

    The defaults fit 10 minutes on a 2-core CPU with the starter (measured stage by stage: an
    answer of up to 128 tokens ~1 s, a pair judged in both orders ~3 s, a DPO step of 4 pairs
    ~15 s, a dev checkpoint ~35 s); the earlier 48 prompts / 96 pairs / 66 steps took 34 minutes."""

    train_prompts: int = 24
    dev_prompts: int = 8
    eval_prompts: int = 16
    k: int = 4  # answers per train prompt
    critique_drafts: int = 8
    judge_pairs: int = 24  # enough to see whether the judge beats chance against the checks; the slow stage
    rounds: int = 1
    max_tokens: int = 128  # room for a long answer to be long: truncated answers all look alike to the checks
    epochs: float = 2.0
    max_steps: int = 12  # DPO steps of 4 pairs at most (the budget's largest share)
    checkpoints: int = 2  # evenly spaced checkpoints the dev prompts choose from

    @classmethod
    def for_budget(cls, minutes: float) -> "Sizes":
        f = max(0.25, minutes / 10)
        base = cls()
        return cls(train_prompts=max(8, round(base.train_prompts * f)), dev_prompts=base.dev_prompts,
                   eval_prompts=max(8, min(64, round(base.eval_prompts * math.sqrt(f)))), k=base.k,
                   critique_drafts=max(4, round(base.critique_drafts * f)),
                   judge_pairs=max(16, round(base.judge_pairs * f)), max_steps=max(4, round(base.max_steps * f)))


@dataclass
class TuneOptions:
    directory: Path = Path("tune")
    constitution: str = "concise-writer"
    model: str = "starter"  # the GGUF that samples, judges and serves
    train_model: str | None = None  # the HF base the LoRA is trained on (default: the starter's HF copy)
    judge: str | None = None  # default: the model; "none": no AI judge (pairs and evaluation by the checks)
    critic: str | None = None  # default: the model (self-critique)
    pairs: str = "auto"  # auto | judge | checks | both
    budget_minutes: float = 10.0
    sizes: Sizes | None = None  # explicit sizes (tests); default: Sizes.for_budget(budget_minutes)
    lr: float = 1e-4
    beta: float = 0.1
    rpo_alpha: float = 1.0
    seed: int = 0
    isolate: bool = True


@dataclass
class Tuned:
    directory: str
    report: dict[str, Any] = field(default_factory=dict)


def _models(opts: TuneOptions) -> tuple[str, str]:
    """(base GGUF path, training base hf:DIR) for the options."""
    from plumb import starter
    from plumb.core.specs import parse_spec

    gen = parse_spec(opts.model, "generate")
    if gen.backend != "llamacpp":
        raise PlumbError(f"--model must be a GGUF served by llama.cpp (llamacpp:PATH.gguf or starter), not "
                         f"{opts.model!r}: tune serves the adapter on it.", exit_code=2)
    if opts.train_model is None and opts.model != "starter":
        raise PlumbError("--model is not the starter: give --train-model hf:DIR, the Hugging Face copy of that "
                         "GGUF the LoRA is trained on.", exit_code=2)
    if opts.model == "starter" or opts.train_model in (None, "starter"):
        starter.pull()
    train = parse_spec(opts.train_model or "starter", "train")
    return gen.target, f"hf:{train.target}"


def _prompts(session: Session, sizes: Sizes) -> str:
    """Use the workspace's own train prompts if it has any, else import the bundled ones once.
    Returns where the prompts came from."""
    own = session.store.one("SELECT count(*) FROM prompts WHERE split = 'train' AND (source IS NULL OR "
                            "source NOT LIKE 'bundled:%')")[0]
    if own:
        return "workspace"
    if not session.store.one("SELECT 1 FROM prompts WHERE source = ?", (PROMPTS_SOURCE,)):
        records = read_jsonl(Path(str(files("plumb.data") / "tune_prompts.jsonl")))
        splits = {"eval": [], "dev": [], "train": []}
        for i, r in enumerate(records):  # every 5th held out, every 10th (offset 3) for checkpoint choice
            splits["eval" if i % 5 == 0 else "dev" if i % 10 == 3 else "train"].append(r)
        with session.store.transaction():
            for split, rows in splits.items():
                import_records(session.store, rows, PROMPTS_SOURCE, split)
    return "bundled"


def _pairs_mode(session: Session, opts: TuneOptions, const: Any, judge_spec: str | None) -> tuple[str, str]:
    """(mode, why). auto: trust the judge only where this run measured it agreeing with the checks."""
    has_checks = any(p.checks for p in const.principles)
    if opts.pairs != "auto":
        return opts.pairs, f"chosen with --pairs {opts.pairs}"
    if judge_spec is None:
        return "checks", "no AI judge (--judge none), so the checks decide"
    if not has_checks:
        return "judge", "the constitution has no code checks, so the AI judge alone decides"
    rate = agreement(session, judge_spec).with_checks.get("overall")
    if rate is None or rate.n == 0:
        return "checks", "the judge could not be compared with the checks, so the checks decide"
    lo, _ = rate.interval
    if lo > 0.5:
        return "both", f"the judge agreed with the checks {rate} on this run, better than chance"
    return "checks", (f"the judge agreed with the checks only {rate} on this run, not better than chance, "
                      "so the checks decide")


def run(opts: TuneOptions, sink: EventSink | None = None, cancel: threading.Event | None = None) -> Tuned:
    """Every stage; setting ``cancel`` stops at the next step (rerun: continues from there)."""
    from plumb.pipeline.report import write_report

    emit = sink or (lambda event: None)
    sizes = opts.sizes or Sizes.for_budget(opts.budget_minutes)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        seconds[name] = round(time.perf_counter() - clock, 1)
        clock = time.perf_counter()

    base_gguf, train_model = _models(opts)
    with open_session(opts.directory, create=True, constitution=opts.constitution) as session:
        if cancel is not None:
            session.cancel = cancel
        const = session.constitution(opts.constitution)  # validated, checks resolved, before any work
        judge_spec = None if opts.judge == "none" else str(session.model("generate", opts.judge or opts.model))
        if judge_spec is None and (opts.pairs in ("judge", "both") or not any(p.checks for p in const.principles)):
            raise PlumbError("--judge none leaves only the code checks to decide: use --pairs checks (or auto) with "
                             "a constitution that has checks.", exit_code=2)
        emit(Event("stage", stage="prompts", message=f"constitution {const.name} ({const.hash}), {opts.directory}"))
        source = _prompts(session, sizes)
        lap("prompts")

        params = SamplingParams(n=sizes.k, temperature=0.8, top_p=0.95, max_tokens=sizes.max_tokens, seed=opts.seed)
        sample(session, SampleOptions(model=opts.model, split="train", params=params, constitution=opts.constitution,
                                      limit=sizes.train_prompts), emit)
        lap("sample")

        critique(session, CritiqueOptions(critic=opts.critic or opts.model, rounds=sizes.rounds,
                                          limit=sizes.critique_drafts, constitution=opts.constitution), emit)
        lap("critique")

        if judge_spec is not None:
            judge(session, JudgeOptions(judge_spec, constitution=opts.constitution, limit=sizes.judge_pairs), emit)
        if any(p.checks for p in const.principles):
            judge(session, JudgeOptions(CHECKS, constitution=opts.constitution), emit)
        lap("judge")

        mode, why = _pairs_mode(session, opts, const, judge_spec)
        built = build(session.store, mode)
        emit(Event("log", message=f"pairs by {mode}: {len(built.pairs)} kept, dropped {dict(built.dropped)}; {why}"))
        if len(built.pairs) < MIN_PAIRS:
            raise PlumbError(
                f"only {len(built.pairs)} usable pairs (by {mode}; dropped: {dict(built.dropped) or 'none'}) - too few "
                f"to train on meaningfully (at least {MIN_PAIRS}). {why}. Raise --budget-minutes for more prompts, "
                "or use a stronger judge (--judge anthropic:... or a larger GGUF).", exit_code=2)
        lap("pairs")

        steps = max(1, min(sizes.max_steps, math.ceil(sizes.epochs * len(built.pairs) / 4)))
        config = {"steps": steps, "batch_size": 4, "lr": opts.lr, "beta": opts.beta, "rpo_alpha": opts.rpo_alpha,
                  "max_length": 384, "seed": opts.seed, "keep_checkpoints": 0,
                  "checkpoint_every": max(1, math.ceil(steps / sizes.checkpoints))}
        trained = train(session, TrainOptions("dpo", policy=train_model, config=config, pairs_by=mode,
                                              constitution=opts.constitution, isolate=opts.isolate), emit)
        lap("train")

        chosen, choice = _choose_checkpoint(session, opts, sizes, trained, base_gguf, train_model, emit)
        lap("choose")

        adapter_gguf = Path(opts.directory).resolve() / "adapter.gguf"
        shutil.copyfile(chosen, adapter_gguf)
        session.store.add_artifact("gguf-lora", str(adapter_gguf), trained.run_id,
                                   meta={"checkpoint": choice["chosen"], "base": base_gguf})
        lap("export")

        result = evaluate(session, EvalOptions(base_gguf, str(adapter_gguf), max_tokens=sizes.max_tokens,
                                               judge=judge_spec, constitution=opts.constitution,
                                               limit=sizes.eval_prompts), emit)
        lap("evaluate")

        emit(Event("stage", stage="report", message=str(Path(opts.directory) / "report.md")))
        report = write_report(session, Path(opts.directory), const, base_gguf, str(adapter_gguf), train_model,
                              trained, result, {"mode": mode, "why": why, "kept": len(built.pairs),
                                                "dropped": dict(built.dropped)},
                              choice, source, seconds)
    emit(Event("done", values={"checks_base": report["eval"]["base"]["checks"].get("all", {}).get("rate", 0),
                               "checks_tuned": report["eval"]["tuned"]["checks"].get("all", {}).get("rate", 0)}))
    return Tuned(str(opts.directory), report)


def _choose_checkpoint(session: Session, opts: TuneOptions, sizes: Sizes, trained: Any, base_gguf: str,
                       train_model: str, emit: EventSink) -> tuple[Path, dict[str, Any]]:
    """Each checkpoint's adapter as a GGUF LoRA, scored by the checks on the dev prompts; the best ships
    (the earliest among equals: less drift from the base for the same score)."""
    from plumb.train import checkpoint

    found = checkpoint.checkpoints(trained.out_dir)
    if not found:
        raise PlumbError(f"the training run left no checkpoints in {trained.out_dir}.")
    emit(Event("stage", stage="choose", total=len(found),
               message=f"{len(found)} checkpoints on {sizes.dev_prompts} dev prompts by the checks"))
    params = SamplingParams(n=1, temperature=0.0, max_tokens=sizes.max_tokens, seed=0)
    scores = {}
    for k, ckpt in enumerate(found, 1):
        gguf = export_adapter(session, str(ckpt / "adapter"), train_model.removeprefix("hf:"), trained.run_id,
                              str(ckpt / "adapter.gguf"))
        result = compare(session, CompareOptions(base_gguf, str(gguf), split="dev", params=params,
                                                 constitution=opts.constitution, limit=sizes.dev_prompts))
        scores[ckpt.name] = (result.checks["tuned"], gguf)
        emit(Event("progress", stage="choose", step=k, total=len(found)))
    best = found[0].name
    for ckpt in found[1:]:  # strictly better only: the earliest of equal scores stays
        if scores[ckpt.name][0] > scores[best][0]:
            best = ckpt.name
    return scores[best][1], {"chosen": best, "dev_checks": {name: s for name, (s, _) in scores.items()},
                             "dev_checks_base": result.checks["base"]}
