"""The sample stage: answers to prompts, stored with their provenance.

Every sample records the model spec, the backend, the sampling parameters, the
plugin that produced it (name and version) and the constitution hash. Prompts
are given (and added to the store) or are the workspace's split. Prompts go to
the backend in chunks, each stored as soon as it is back, so an interrupted
run keeps what it finished and a rerun tops up only what is missing (the same
model, parameters and constitution count as done; ``again`` samples anew).
A chunk that fails is retried prompt by prompt: one bad request costs only
itself, and the failures are reported with the rest stored. When the backend
is unavailable (every server of an ``openai:`` pool down) the stage stores the
answers of the chunk that came back and stops with an error that says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from plumb.core.errors import BackendUnavailable, PlumbError
from plumb.core.records import Chat, Completion, Event, EventSink, ModelSpec, SamplingParams
from plumb.core.store import Provenance
from plumb.pipeline.session import Session

CHUNK = 8  # prompts per backend call: progress, and what an interruption can lose


@dataclass
class SampleOptions:
    model: str | None = None  # spec; default plumb.toml's [models] generate
    prompts: list[str] = field(default_factory=list)  # new prompts (stored, source "cli"); else the split
    split: str = "train"
    params: SamplingParams = field(default_factory=SamplingParams)
    limit: int | None = None  # the split's first N prompts
    prompt_ids: list[int] | None = None  # these stored prompts instead of the split
    constitution: str | None = None
    again: bool = False  # sample anew even where this model already answered with these parameters


@dataclass
class Sampled:
    spec: ModelSpec
    constitution_hash: str
    stored: list[dict[str, Any]] = field(default_factory=list)  # {id, prompt_id, text, finish_reason}
    failed: list[tuple[int, str, str]] = field(default_factory=list)  # (prompt_id, prompt, error)
    prompts: int = 0  # prompts asked for
    reused: int = 0  # samples already there from an earlier run
    plugin: str = "?"
    version: str = "?"


def sample(session: Session, opts: SampleOptions, sink: EventSink | None = None) -> Sampled:
    emit = sink or (lambda event: None)
    const = session.constitution(opts.constitution)
    spec = session.model("generate", opts.model)
    store = session.store
    if opts.prompts:
        rows = [(store.add_prompt([{"role": "user", "content": p}], source="cli"), Chat.from_user(p))
                for p in opts.prompts]
    else:
        wanted = set(opts.prompt_ids or ())
        chosen = store.prompts(opts.split)[:opts.limit] if opts.prompt_ids is None else [
            r for r in store.prompts() if r["id"] in wanted]
        rows = [(r["id"], Chat.from_dicts(json.loads(r["messages"]))) for r in chosen]
        if not rows:
            raise PlumbError(f"no prompts given and the workspace has no {opts.split!r} prompts; pass PROMPTS or "
                             "`plumb data import FILE.jsonl` first.", exit_code=2)
    params = opts.params
    want = Provenance(model=str(spec), backend=spec.backend, params=params.to_dict(), constitution_hash=const.hash)
    have = {} if opts.again else store.samples_made(want, [pid for pid, _ in rows])
    out = Sampled(spec, const.hash, prompts=len(rows), reused=sum(min(len(v), params.n) for v in have.values()))
    todo = [(pid, chat, params.n - len(have.get(pid, []))) for pid, chat in rows]
    todo = [t for t in todo if t[2] > 0]
    emit(Event("stage", stage="sample", total=len(todo),
               message=f"{params.n} per prompt from {spec} for {len(todo)} prompts"
                       + (f" ({out.reused} samples already made)" if out.reused else "")))
    done = 0
    for need in sorted({t[2] for t in todo}, reverse=True):
        group = [t for t in todo if t[2] == need]
        for i in range(0, len(group), CHUNK):
            session.context().check_cancelled()
            chunk = group[i:i + CHUNK]
            _sample_chunk(session, spec, [(pid, chat) for pid, chat, _ in chunk],
                          SamplingParams(**{**params.to_dict(), "n": need}), params, const.hash, out)
            done += len(chunk)
            emit(Event("progress", stage="sample", step=done, total=len(todo)))
    return out


def _sample_chunk(session: Session, spec: ModelSpec, rows: list[tuple[int, Chat]], params: SamplingParams,
                  asked: SamplingParams, const_hash: str, out: Sampled) -> None:
    """Generate for one chunk (prompt by prompt if the chunk fails) and store it at once."""
    pm = session.pm
    chats = [chat for _, chat in rows]
    down: BackendUnavailable | None = None
    try:
        answers, out.plugin, out.version = pm.generate(spec, chats, params)
        results: list[list[Completion] | PlumbError | None] = list(answers)
    except BackendUnavailable as exc:
        down, results = exc, list(exc.finished) or [None] * len(rows)
    except PlumbError as batch_error:
        if len(chats) == 1:
            if not out.stored:
                raise
            results = [batch_error]
        else:
            results = []
            for chat in chats:
                if down:
                    results.append(None)
                    continue
                try:
                    one, out.plugin, out.version = pm.generate(spec, [chat], params)
                    results.append(one[0])
                except BackendUnavailable as exc:
                    down = exc
                    results.append(None)
                except PlumbError as exc:
                    results.append(exc)
            if not down and all(isinstance(r, PlumbError) for r in results) and not out.stored:
                raise batch_error
    if down and out.plugin == "?":  # nothing answered yet: the provenance names the backend's plugin
        _, out.plugin, out.version = pm.backend(spec)
    _store(session, spec, rows, results, asked, const_hash, out)
    if down:
        raise PlumbError(f"{down} Stopped: {len(out.stored)} samples of this run are stored; run the same "
                         "command again to sample the rest (what is stored is skipped).")


def _store(session: Session, spec: ModelSpec, rows: list[tuple[int, Chat]],
           results: list[list[Completion] | PlumbError | None], asked: SamplingParams, const_hash: str,
           out: Sampled) -> None:
    """Store each prompt's answers; an error is recorded as a failure, None (not done) is skipped."""
    with session.store.transaction():
        for (prompt_id, chat), result in zip(rows, results):
            if result is None:
                continue
            if isinstance(result, PlumbError):
                out.failed.append((prompt_id, chat.last_user, str(result)))
                continue
            for c in result:
                prov = Provenance(model=str(spec), backend=c.backend, params=asked.to_dict(), plugin=out.plugin,
                                  plugin_version=out.version, constitution_hash=const_hash)
                sid = session.store.add_sample(prompt_id, c.text, prov, finish_reason=c.finish_reason)
                out.stored.append({"id": sid, "prompt_id": prompt_id, "text": c.text,
                                   "finish_reason": c.finish_reason})
