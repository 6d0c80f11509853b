"""The compare stage: base and tuned answers side by side, from one loaded model.

llama.cpp loads the base GGUF once and applies the GGUF LoRA at scale 0 (the
base) and 1 (tuned). Both sides answer the same prompts (greedy by default),
every answer is stored with its provenance (the model recorded as
``llamacpp:BASE+lora:ADAPTER@SCALE``), and each is scored by the
constitution's checks (the first answer of each prompt, where ``params.n`` asks
for several). Answers already stored for the same model, parameters and
constitution are reused, so a rerun only asks for what is missing.

The prompts are a split's (the first ``limit``), given stored prompts, or one
typed prompt (stored as a prompt of the split first). A person's blind
verdicts on the two sides (the TUI's blind A/B) are read back by
``win_counts``; ``next_unjudged`` finds the next eval prompt without one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from plumb.core.records import Chat, Event, EventSink, ModelSpec, SamplingParams
from plumb.core.checks import check_texts
from plumb.core.store import Provenance, Store
from plumb.pipeline.session import Session

SIDES = (("base", 0.0), ("tuned", 1.0))


@dataclass
class CompareOptions:
    base_gguf: str
    adapter_gguf: str
    split: str = "eval"
    params: SamplingParams = field(default_factory=lambda: SamplingParams(temperature=0.0, max_tokens=120))
    constitution: str | None = None
    limit: int | None = None  # the split's first N prompts
    sides: tuple[str, ...] = ("base", "tuned")  # ("base",): the base's answers alone
    prompt: str | None = None  # one typed prompt (stored in ``split``) instead of the split's prompts
    prompt_ids: tuple[int, ...] = ()  # these stored prompts instead of the split's
    backend: str = "llamacpp"  # serves both sides: a backend that scales a GGUF LoRA per call (``lora_scale``)
    scale: float = 1.0  # the tuned side's LoRA scale (the base side's is 0)


@dataclass
class Row:
    prompt: str
    base: str
    tuned: str
    prompt_id: int = 0
    base_id: int = 0  # the stored samples
    tuned_id: int = 0

    @property
    def changed(self) -> bool:
        return self.base.strip() != self.tuned.strip()


@dataclass
class Compared:
    rows: list[Row]
    checks: dict[str, float]  # side -> pooled share of the constitution's checks passed
    constitution_hash: str
    scores: dict[str, float] = field(default_factory=dict)  # side -> mean graded score (plumb.core.checks)
    samples: dict[str, list[list[str]]] = field(default_factory=dict)  # side -> per row, its params.n answers


def side_spec(opts: CompareOptions, side: str) -> ModelSpec:
    """The model of one side: the base GGUF alone, or with the adapter at the tuned side's scale. The base is
    the base whatever adapter sits beside it: its answers are made once and reused."""
    if side == "base":
        return ModelSpec(opts.backend, opts.base_gguf)
    return ModelSpec(opts.backend, opts.base_gguf, lora=opts.adapter_gguf, lora_scale=_scale(opts, side))


def side_models(opts: CompareOptions) -> tuple[str, str]:
    """The model names the (base, tuned) answers are stored under."""
    return tuple(f"{side_spec(opts, side)}@{_scale(opts, side):g}" for side, _ in SIDES)  # type: ignore[return-value]


def _scale(opts: CompareOptions, side: str) -> float:
    return opts.scale if side == "tuned" else dict(SIDES)[side]


def _prompts(store: Store, opts: CompareOptions) -> list[Any]:
    if opts.prompt is not None:
        pid = store.add_prompt([{"role": "user", "content": opts.prompt}], split=opts.split, source="compare")
        return [store.prompt(pid)]
    if opts.prompt_ids:
        return [store.prompt(pid) for pid in opts.prompt_ids]
    return store.prompts(opts.split)[:opts.limit]


def compare(session: Session, opts: CompareOptions, sink: EventSink | None = None) -> Compared:
    from plumb.models.specs import check_exists

    emit = sink or (lambda event: None)
    const = session.constitution(opts.constitution)
    for side in opts.sides:  # a missing GGUF is named, with the models this workspace has, before any load
        check_exists(side_spec(opts, side), session.root)
    prompts = _prompts(session.store, opts)
    chats = [Chat.from_dicts(json.loads(p["messages"])) for p in prompts]
    emit(Event("stage", stage="compare", total=len(opts.sides) * len(prompts),
               message=f"{' vs '.join(opts.sides)} on {len(prompts)} {opts.split} prompts"))
    answers: dict[str, list[str]] = {}
    samples: dict[str, list[list[str]]] = {}
    ids: dict[str, list[int]] = {}
    checks: dict[str, float] = {}
    scores: dict[str, float] = {}
    for k, side in enumerate(s for s, _ in SIDES if s in opts.sides):
        spec, scale = side_spec(opts, side), _scale(opts, side)
        prov = Provenance(model=f"{spec}@{scale:g}", backend=opts.backend, params=opts.params.to_dict(),
                          constitution_hash=const.hash)
        have = session.store.samples_made(prov, [p["id"] for p in prompts])
        n = opts.params.n
        for need in sorted({max(0, n - len(have[p["id"]])) for p in prompts} - {0}, reverse=True):
            missing = [i for i, p in enumerate(prompts) if n - len(have[p["id"]]) == need]
            asked = SamplingParams(**{**opts.params.to_dict(), "n": need})
            batches, plugin, version = session.pm.generate(spec, [chats[i] for i in missing], asked)
            made = Provenance(**{**prov.__dict__, "plugin": plugin, "plugin_version": version})
            with session.store.transaction():
                for i, batch in zip(missing, batches):
                    for c in batch:
                        session.store.add_sample(prompts[i]["id"], c.text, made, finish_reason=c.finish_reason)
        have = session.store.samples_made(prov, [p["id"] for p in prompts])
        samples[side] = [[r["text"] for r in have[p["id"]][:n]] for p in prompts]
        answers[side] = [have[p["id"]][0]["text"] for p in prompts]
        ids[side] = [have[p["id"]][0]["id"] for p in prompts]
        checked = check_texts(session.pm, const, answers[side], str(spec))
        done, total = map(sum, zip(*(c.counts() for c in checked))) if checked else (0, 0)
        checks[side] = done / total if total else float("nan")  # pooled share of checks passed, as evaluate
        scores[side] = sum(c.score for c in checked) / len(checked) if checked else float("nan")
        emit(Event("progress", stage="compare", step=(k + 1) * len(prompts), total=len(opts.sides) * len(prompts)))
    tuned = "tuned" if "tuned" in answers else "base"
    rows = [Row(p["text"], b, t, p["id"], bi, ti)
            for p, b, t, bi, ti in zip(prompts, answers["base"], answers[tuned], ids["base"], ids[tuned])]
    return Compared(rows, checks, const.hash, scores, samples)


_HUMAN_ON = ("FROM judgments j JOIN samples sa ON sa.id = j.a_id JOIN samples sb ON sb.id = j.b_id"
             " WHERE j.source = 'human' AND sa.model = ? AND sb.model = ?")  # verdicts on (base, tuned) models


def win_counts(store: Store, models: tuple[str, str]) -> tuple[int, int, int]:
    """(tuned wins, base wins, ties) over the person's verdicts on answers of ``models`` (base, tuned)."""
    winners = [r["winner"] for r in store.query("SELECT j.winner " + _HUMAN_ON, models)]
    return winners.count("b"), winners.count("a"), winners.count("tie")


def next_unjudged(store: Store, models: tuple[str, str]) -> int | None:
    """The first eval prompt without the person's verdict on ``models`` (base, tuned), or None."""
    row = store.one("SELECT p.id FROM prompts p WHERE p.split = 'eval' AND NOT EXISTS (SELECT 1 " + _HUMAN_ON
                    + " AND j.prompt_id = p.id) ORDER BY p.id LIMIT 1", models)
    return None if row is None else int(row["id"])
