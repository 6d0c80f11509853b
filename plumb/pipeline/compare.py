"""The compare stage: base and tuned answers side by side, from one loaded model.

llama.cpp loads the base GGUF once and applies the GGUF LoRA at scale 0 (the
base) and 1 (tuned). Both sides answer the same prompts (greedy by default),
every answer is stored with its provenance (the model recorded as
``llamacpp:BASE+lora:ADAPTER@SCALE``), and each is scored by the
constitution's checks. Answers already stored for the same model, parameters
and constitution are reused, so a rerun only asks for what is missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from plumb.core.records import Chat, Event, EventSink, ModelSpec, SamplingParams
from plumb.core.checks import check_texts
from plumb.core.store import Provenance
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


def compare(session: Session, opts: CompareOptions, sink: EventSink | None = None) -> Compared:
    emit = sink or (lambda event: None)
    const = session.constitution(opts.constitution)
    prompts = session.store.prompts(opts.split)[:opts.limit]
    chats = [Chat.from_dicts(json.loads(p["messages"])) for p in prompts]
    emit(Event("stage", stage="compare", total=len(opts.sides) * len(prompts),
               message=f"{' vs '.join(opts.sides)} on {len(prompts)} {opts.split} prompts"))
    answers: dict[str, list[str]] = {}
    ids: dict[str, list[int]] = {}
    checks: dict[str, float] = {}
    scores: dict[str, float] = {}
    for k, (side, scale) in enumerate(s for s in SIDES if s[0] in opts.sides):
        # the base is the base whatever adapter sits beside it: its answers are made once and reused
        spec = (ModelSpec("llamacpp", opts.base_gguf) if side == "base" else
                ModelSpec("llamacpp", opts.base_gguf, lora=opts.adapter_gguf, lora_scale=scale))
        prov = Provenance(model=f"{spec}@{scale:g}", backend="llamacpp", params=opts.params.to_dict(),
                          constitution_hash=const.hash)
        have = session.store.samples_made(prov, [p["id"] for p in prompts])
        missing = [i for i, p in enumerate(prompts) if not have[p["id"]]]
        if missing:
            batches, plugin, version = session.pm.generate(spec, [chats[i] for i in missing], opts.params)
            made = Provenance(**{**prov.__dict__, "plugin": plugin, "plugin_version": version})
            with session.store.transaction():
                for i, batch in zip(missing, batches):
                    session.store.add_sample(prompts[i]["id"], batch[0].text, made,
                                             finish_reason=batch[0].finish_reason)
            have = session.store.samples_made(prov, [p["id"] for p in prompts])
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
    return Compared(rows, checks, const.hash, scores)
