"""`plumb tune`: from a constitution to a tuned model, measured — the main job.

``tune(session, TuneOptions, sink)`` is a stage like the others: the CLI opens the workspace
(``--out`` or ``-w``) and the TUI passes its own. The budget is wall-clock time, and what a
stage measures as useless stops early so that the time goes into learning:

    1. prompts   the bundled everyday requests (or the workspace's own): train, dev, eval
    2. headroom  base answers to the dev prompts, checked: too little to learn is a warning
    3. sample    k answers per train prompt through llama.cpp (not for grpo: it samples itself)
    4. critique  CAI revisions; set aside when the first ones come back flagged
    5. judge     an audit: the AI judge on a few pairs against the checks; at chance, it is set
                 aside for the rest of the run (a constitution without checks needs it)
    6. train     the method (``learn``): sft on each prompt's best answer (the default), dpo on
                 each prompt's largest-gap pair, or grpo with the checks as rewards; ``rounds``
                 (default 3 for sft and dpo) samples new prompts from the adapter so far and
                 trains on (on-policy); the training time is what the budget leaves after a
                 reserve for the stages below
    7. choose    the checkpoint that passes the most checks on the dev prompts among those that answer the
                 dev probe's facts at least 0.95 times as often as the base (pipeline.probe)
    8. export    the adapter as a GGUF LoRA on the same base GGUF
    9. evaluate  base vs tuned on the held-out prompts, and the alignment-tax probe
   10. report    DIR/report.md, DIR/report.json, PNG charts

Every stage stores what it makes with provenance and skips, on a rerun, what is done.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, field, replace
from importlib.resources import files
from pathlib import Path
from typing import Any

from plumb.core.checks import has_checks
from plumb.core.dataio import import_records, read_jsonl
from plumb.core.errors import PlumbError
from plumb.core.records import Event, EventSink, ModelSpec
from plumb.pipeline import tune_stages as st
from plumb.pipeline.recipes import DEFAULT_METHOD, DEFAULT_ROUNDS, METHODS, RECIPES  # the CLI's choices
from plumb.pipeline.session import Session

PROMPTS_SOURCE = "bundled:tune_prompts.jsonl"
MIN_TRAIN_S = 45.0  # less than this for training is no run worth making


@dataclass
class Sizes:
    """How much each stage makes; ``for_budget`` scales them with the time budget. Training gets
    whatever time is left (``TuneOptions.budget_minutes`` minus the other stages, measured)."""

    train_prompts: int = 48
    dev_prompts: int = 6
    eval_prompts: int = 24
    probe_questions: int = 48  # all of them: the base gets ~30 right, so one flip is ~3%, not 7%
    k: int = 4  # answers per train prompt
    critique_drafts: int = 4  # a first look: more only if they come back usable
    judge_audit: int = 8  # pairs the AI judge decides before it is trusted or set aside
    max_tokens: int = 128  # room for a long answer to be long: truncated answers all look alike to the checks
    checkpoints: int = 2  # evenly spaced checkpoints the dev prompts choose from

    @classmethod
    def for_budget(cls, minutes: float) -> "Sizes":
        f = max(0.2, minutes / 10)
        base = cls()
        return cls(train_prompts=max(8, round(base.train_prompts * f)),
                   dev_prompts=max(4, min(base.dev_prompts, round(base.dev_prompts * f))),
                   eval_prompts=max(8, min(64, round(base.eval_prompts * math.sqrt(f)))),
                   probe_questions=max(8, min(48, round(base.probe_questions * math.sqrt(f)))))


@dataclass
class TuneOptions:
    constitution: str | None = None  # default: the workspace's
    model: str | None = None  # the GGUF or servers that sample and serve (default: the workspace's generate model)
    train_model: str | None = None  # the HF copy the LoRA is trained on (default: the workspace's train model)
    judge: str | None = None  # default: the model, audited; "none": no AI judge
    critic: str | None = None  # default: the model (self-critique); "none": no critique
    method: str = DEFAULT_METHOD  # dpo | sft | grpo
    rounds: int | None = None  # on-policy rounds (dpo, sft): sample with the adapter so far, rank, train on;
    # default DEFAULT_ROUNDS (the bench's winner), 1 for grpo (it samples on-policy every step)
    budget_minutes: float = 10.0
    sizes: Sizes | None = None  # explicit sizes (tests); default: Sizes.for_budget(budget_minutes)
    prefixes: bool = True  # each sampled answer cut after each sentence is a candidate too (pipeline.learn)
    lr: float | None = None  # default: the method's (recipes.RECIPES)
    anchor: float | None = None  # sft: the weight of KL(base || tuned) on the words (recipes.RECIPES); 0: off
    seed: int = 0
    isolate: bool = True



@dataclass
class Tuned:
    directory: str
    report: dict[str, Any] = field(default_factory=dict)


class Clock:
    """The budget: seconds per stage, and what is left."""

    def __init__(self, minutes: float) -> None:
        self.start = self.mark = time.perf_counter()
        self.budget = minutes * 60
        self.seconds: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - self.mark, 1)
        self.mark = now

    @property
    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.start)


def models(session: Session, opts: TuneOptions) -> tuple[ModelSpec, str]:
    """(the base model that serves base and tuned answers, training base hf:DIR): the options' or the
    workspace's; the starter is pulled on first use. Its backend must serve the tuned LoRA on the same base
    at a chosen scale (``Backend.lora_scale``): llama.cpp's does per call, a pool of servers (``openai:``)
    by loading the adapter, scaled copies included, with vLLM's runtime LoRA API."""
    gen = session.model("generate", opts.model)
    if gen.lora or not session.pm.backend(gen)[0].lora_scale:
        raise PlumbError(f"tune serves base and tuned answers from one base model with the tuned LoRA on it, which "
                         f"backend {gen.backend!r} does not do: the model must be llamacpp:PATH.gguf or starter, or "
                         f"servers that load adapters, openai:URL[,URL...][#MODEL] (no +lora), not {gen}.",
                         exit_code=2)
    named = opts.model or session.ws.model("generate")
    if opts.train_model is None and named != "starter" and session.ws.model("train") == "starter":
        raise PlumbError("the model is not the starter: give --train-model hf:DIR, the Hugging Face copy of that "
                         "model the LoRA is trained on (for a GGUF, `plumb models add NAME FILE.gguf --use` makes "
                         "one).", exit_code=2)
    train = session.model("train", opts.train_model)
    return gen, str(train)


def _split(i: int) -> str:
    """Every 5th prompt held out for evaluation, every 10th (offset 3) for the checkpoint choice."""
    return "eval" if i % 5 == 0 else "dev" if i % 10 == 3 else "train"


def prompts(session: Session, emit: EventSink) -> str:
    """Use the workspace's own train prompts if it has any, else import the bundled ones once.
    Own prompts without an eval or dev split of their own give some of theirs to it (every 5th to
    eval, every 10th to dev), so what is measured was never trained on. Returns where the prompts
    came from."""
    store = session.store
    own = "(source IS NULL OR source NOT LIKE 'bundled:%')"
    train = [r["id"] for r in store.query(f"SELECT id FROM prompts WHERE split = 'train' AND {own} ORDER BY id")]
    if train:
        held = {s: store.one(f"SELECT count(*) FROM prompts WHERE split = ? AND {own}", (s,))[0] for s in ("eval", "dev")}
        moves: dict[str, list[int]] = {"eval": [], "dev": []}
        for i, pid in enumerate(train):
            if (split := _split(i)) != "train" and not held[split]:
                moves[split].append(pid)
        for split, ids in moves.items():
            store.set_split(ids, split)
        if any(moves.values()):
            emit(Event("log", message=f"your {len(train)} prompts: {len(moves['eval'])} held out for evaluation, "
                                      f"{len(moves['dev'])} for choosing a checkpoint (import your own with "
                                      "`plumb data import FILE --split eval` to choose them yourself)"))
        return "workspace"
    if not store.one("SELECT 1 FROM prompts WHERE source = ?", (PROMPTS_SOURCE,)):
        records = read_jsonl(Path(str(files("plumb.data") / "tune_prompts.jsonl")))
        splits: dict[str, list[Any]] = {"eval": [], "dev": [], "train": []}
        for i, r in enumerate(records):
            splits[_split(i)].append(r)
        with store.transaction():
            for split, rows in splits.items():
                import_records(store, rows, PROMPTS_SOURCE, split)
    return "bundled"


def tune(session: Session, opts: TuneOptions, sink: EventSink | None = None) -> Tuned:
    """Every stage; ``session.cancel`` stops at the next step (a rerun continues from there)."""
    emit = sink or (lambda event: None)
    if opts.method not in METHODS:
        raise PlumbError(f"--method {opts.method!r}: choose one of {', '.join(METHODS)}.", exit_code=2)
    if opts.rounds is None:
        opts = replace(opts, rounds=1 if RECIPES[opts.method].samples_itself else DEFAULT_ROUNDS)
    if opts.rounds < 1 or (opts.rounds > 1 and RECIPES[opts.method].samples_itself):
        raise PlumbError(f"--rounds must be at least 1 (and 1 for {opts.method}, which samples on-policy every "
                         "step).", exit_code=2)
    sizes = opts.sizes or Sizes.for_budget(opts.budget_minutes)
    const = session.constitution(opts.constitution)  # validated, checks resolved, before any work
    if not has_checks(const) and opts.judge == "none":
        raise PlumbError(f"nothing can rank answers: the constitution {const.name} has no code checks and --judge "
                         "none leaves no AI judge. Add [[principles.checks]] to its principles (`plumb plugins` "
                         "lists the verifiers) or give --judge SPEC.", exit_code=2)
    reserve = st.reserve_seconds(sizes, opts.rounds)
    if opts.budget_minutes * 60 - reserve - st.sampling_seconds(sizes) < MIN_TRAIN_S:
        need = (reserve + st.sampling_seconds(sizes) + MIN_TRAIN_S) / 60
        raise PlumbError(f"--budget-minutes {opts.budget_minutes:g} leaves no time to train: the other stages take "
                         f"about {reserve / 60:.1f} minutes at these sizes; use at least {math.ceil(need)}.",
                         exit_code=2)
    base, train_model = models(session, opts)  # a first run pulls the starter here, before the clock starts
    clock = Clock(opts.budget_minutes)
    emit(Event("stage", stage="prompts", message=f"constitution {const.name} ({const.hash}), {session.root}, "
                                                 f"method {opts.method} x {opts.rounds} round(s)"))
    source = prompts(session, emit)
    clock.lap("prompts")

    base_gguf = base.target  # a GGUF, or the servers' URLs (openai:)
    backend = session.pm.backend(base)[0]
    run = st.Run(session, opts, sizes, const, base_gguf, train_model, clock, emit, backend=base.backend,
                 adapters=backend.adapters)
    run.headroom()
    clock.lap("headroom")
    run.learn()
    chosen, choice, trained = run.choose()
    clock.lap("choose")

    peft = run.adapters == "peft"  # servers load the peft directory itself; llama.cpp the GGUF LoRA
    adapter_gguf = Path(session.root).resolve() / ("adapter" if peft else "adapter.gguf")
    if peft:
        shutil.rmtree(adapter_gguf, ignore_errors=True)
        shutil.copytree(chosen, adapter_gguf)
    else:
        shutil.copyfile(chosen, adapter_gguf)
    session.store.add_artifact("adapter" if peft else "gguf-lora", str(adapter_gguf), trained.run_id,
                               meta={"checkpoint": choice["chosen"], "base": base_gguf})
    clock.lap("export")

    result, tax = run.evaluate(str(adapter_gguf))
    clock.lap("evaluate")

    from plumb.pipeline.report import write_report

    emit(Event("stage", stage="report", message=str(Path(session.root) / "report.md")))
    report = write_report(session, Path(session.root), const, base_gguf, str(adapter_gguf), train_model,
                          trained, result, run.summary(), choice, source, clock.seconds, tax, base.backend)
    emit(Event("done", values={"checks_base": report["eval"]["base"]["checks"].get("all", {}).get("rate", 0),
                               "checks_tuned": report["eval"]["tuned"]["checks"].get("all", {}).get("rate", 0)}))
    return Tuned(str(session.root), report)
