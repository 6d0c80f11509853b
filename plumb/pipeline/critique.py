"""The critique stage: drafts critiqued against the constitution and revised (CAI).

Drafts are the workspace's sampled answers (kind ``sample``) that this critic
has not critiqued under this constitution. They go to ``plumb_critique`` in
chunks through the hook context; each chunk is stored at once — per round, the
critique row (draft or previous revision, principle, critique, round, critic,
constitution hash) and the revision as a sample of kind ``revision`` whose
parent is the answer it revises — so an interrupted run keeps what it finished
and a rerun continues with the rest.

A revision is flagged, and never used as a chosen answer, when it is empty,
repeats the answer it revises, talks about the critique instead of answering,
or fails a constitution check that the answer it revises passed
(``revision_flags``). Whether an unflagged revision is *better* is the
judge's or the checks' call (``plumb judge``), not this stage's.
"""

from __future__ import annotations

import difflib
import json
import re
from collections import Counter
from dataclasses import dataclass, field

from plumb.core.errors import PlumbError
from plumb.core.records import Chat, CritiqueRequest, Event, EventSink
from plumb.core.checks import check_texts, passed
from plumb.core.store import Provenance
from plumb.pipeline.session import Session

CHUNK = 8
_META = re.compile(r"\b(the critique|critique (says|points|mentions)|revised (response|version|answer)|"
                   r"(original|previous|last|above) (response|answer)|as an ai|i apologi[sz]e|i'?m sorry|"
                   r"i am sorry|as a chatbot)\b", re.IGNORECASE)


@dataclass
class CritiqueOptions:
    critic: str | None = None  # model spec; default: plumb.toml's [models] generate (self-critique)
    rounds: int = 2
    order: str = "weight"  # "weight": a principle drawn by weight per round; "turn": each principle in turn
    split: str = "train"
    limit: int | None = None  # only the split's first N drafts
    constitution: str | None = None


@dataclass
class Critiqued:
    critic: str
    drafts: int = 0
    rounds: int = 0
    usable: int = 0  # unflagged final revisions
    flags: Counter = field(default_factory=Counter)
    already: int = 0  # drafts this critic had already critiqued


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def revision_flags(draft: str, revision: str, draft_passed: set[str], revision_passed: set[str]) -> tuple[str, ...]:
    """Why a revision must not be a chosen answer (empty tuple: usable)."""
    if not revision.strip():
        return ("empty",)
    flags = []
    if _normal(revision) == _normal(draft) or difflib.SequenceMatcher(None, _normal(draft),
                                                                      _normal(revision)).ratio() > 0.95:
        flags.append("repeats-draft")
    if _META.search(revision):
        flags.append("talks-about-critique")
    flags += [f"breaks-check:{c}" for c in sorted(draft_passed - revision_passed)]
    return tuple(flags)


def critique(session: Session, opts: CritiqueOptions, sink: EventSink | None = None) -> Critiqued:
    emit = sink or (lambda event: None)
    if opts.rounds < 1:
        raise PlumbError("--rounds must be at least 1.", exit_code=2)
    if opts.order not in ("weight", "turn"):
        raise PlumbError(f"--order {opts.order!r}: use weight or turn.", exit_code=2)
    const = session.constitution(opts.constitution)
    critic = session.model("generate", opts.critic)
    store = session.store
    drafts = store.query(
        """SELECT s.id, s.prompt_id, s.text, p.messages, EXISTS (
               SELECT 1 FROM critiques c WHERE c.sample_id = s.id AND c.round = 1 AND c.model = ?
               AND c.constitution_hash = ?) AS done
           FROM samples s JOIN prompts p ON p.id = s.prompt_id
           WHERE s.kind = 'sample' AND p.split = ? ORDER BY s.id""", (str(critic), const.hash, opts.split))
    if not drafts:
        raise PlumbError(f"no sampled answers in the {opts.split!r} split to critique; run `plumb generate` first.",
                         exit_code=2)
    drafts = drafts[:opts.limit]  # the first N drafts: a rerun with the same limit has nothing left to do
    out = Critiqued(str(critic), already=sum(d["done"] for d in drafts))
    drafts = [d for d in drafts if not d["done"]]
    out.drafts = len(drafts)
    turn = tuple(p.id for p in const.principles) if opts.order == "turn" else ()
    emit(Event("stage", stage="critique", total=len(drafts),
               message=f"{len(drafts)} drafts x {opts.rounds} rounds by {critic}"
                       + (f" ({out.already} already critiqued)" if out.already else "")))
    ctx = session.context(emit)
    for start in range(0, len(drafts), CHUNK):
        ctx.check_cancelled()
        chunk = drafts[start:start + CHUNK]
        requests = [CritiqueRequest(Chat.from_dicts(json.loads(d["messages"])), d["text"],
                                    turn[i % len(turn):] + turn[:i % len(turn)] if turn else (), opts.rounds)
                    for i, d in enumerate(chunk, start)]
        results, plugin, version = session.pm.first("plumb_critique", ctx=ctx, constitution=const,
                                                     requests=requests, critic=critic)
        if results is None:
            raise PlumbError("no installed plugin critiques (plumb_critique); `plumb plugins` lists them.")
        if len(results) != len(requests):
            raise PlumbError(f"plugin {plugin} returned {len(results)} critiques for {len(requests)} drafts.")
        prov = Provenance(model=str(critic), backend=critic.backend, params={"rounds": opts.rounds, "order": opts.order},
                          plugin=plugin, plugin_version=version, constitution_hash=const.hash)
        _store_chunk(session, const, critic, chunk, results, prov, out)
        emit(Event("progress", stage="critique", step=min(start + CHUNK, len(drafts)), total=len(drafts)))
    return out


def _store_chunk(session: Session, const, critic, chunk, results, prov: Provenance, out: Critiqued) -> None:
    pm, store = session.pm, session.store
    texts = [d["text"] for d in chunk] + [c.revision for rounds in results for c in rounds]
    checks = check_texts(pm, const, texts, str(critic))
    passes = {i: {f"{pid}/{r.name}" for pid, r in c.results if passed(r)} for i, c in enumerate(checks)}
    k = len(chunk)
    with store.transaction():
        for i, (draft, rounds) in enumerate(zip(chunk, results)):
            parent_id, parent_text, parent_passed = draft["id"], draft["text"], passes[i]
            for c in rounds:
                c.flags = revision_flags(parent_text, c.revision, parent_passed, passes[k])
                rev_id = store.add_sample(draft["prompt_id"], c.revision, prov, kind="revision", parent_id=parent_id)
                store.add_critique(parent_id, c, rev_id, prov)
                out.rounds += 1
                out.flags.update({f.split(":")[0] for f in c.flags})  # each kind once per revision
                if c.revision.strip():  # the next round critiqued this revision (cai.py: empty ones are skipped)
                    parent_id, parent_text, parent_passed = rev_id, c.revision, passes[k]
                k += 1
            out.usable += bool(rounds) and not rounds[-1].flags
