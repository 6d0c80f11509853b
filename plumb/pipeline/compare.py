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

from plumb.core.records import Chat, Completion, Event, EventSink, ModelSpec, SamplingParams
from plumb.core.rewards import check_completions
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
    checks: dict[str, float]  # side -> fraction of the constitution's checks passed
    constitution_hash: str


def compare(session: Session, opts: CompareOptions, sink: EventSink | None = None) -> Compared:
    emit = sink or (lambda event: None)
    const = session.constitution(opts.constitution)
    prompts = session.store.prompts(opts.split)[:opts.limit]
    chats = [Chat.from_dicts(json.loads(p["messages"])) for p in prompts]
    emit(Event("stage", stage="compare", total=len(SIDES) * len(prompts),
               message=f"base vs tuned on {len(prompts)} {opts.split} prompts"))
    answers: dict[str, list[str]] = {}
    ids: dict[str, list[int]] = {}
    checks: dict[str, float] = {}
    for k, (side, scale) in enumerate(SIDES):
        spec = ModelSpec("llamacpp", opts.base_gguf, lora=opts.adapter_gguf, lora_scale=scale)
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
        results = check_completions(session.pm, const, [Completion(t, str(spec), "llamacpp") for t in answers[side]])
        total = sum(len(r) for r in results)
        checks[side] = sum(rw.value for r in results for _, rw in r) / total if total else float("nan")
        emit(Event("progress", stage="compare", step=(k + 1) * len(prompts), total=len(SIDES) * len(prompts)))
    rows = [Row(p["text"], b, t, p["id"], bi, ti)
            for p, b, t, bi, ti in zip(prompts, answers["base"], answers["tuned"], ids["base"], ids["tuned"])]
    return Compared(rows, checks, const.hash)
