"""The alignment-tax probe: tuning a style must not erase what the model knows.

Short questions with known answers (capitals, counts, everyday facts) are answered greedily by
base and tuned from one loaded model (the compare stage). An answer is right when it contains
one of the accepted answers (or its plural) as a whole word. The tax is measured on the
questions the base answers right: the share the tuned model still answers right (``kept``, at
least 0.95 to pass), with its 95% interval. ``said_first`` is the same share over the questions
whose answer the base gives in its first sentence: a style that shortens answers can keep those,
while a fact the base only reaches later is lost with the words around it.

Two sets that share no question: ``probe`` (``plumb/data/probe_questions.jsonl``) is the
held-out measure the report gives; ``probe-dev`` (``probe_dev_questions.jsonl``) is what
`plumb tune` chooses its checkpoint by, so the reported tax is not the one it was chosen on.
The choice counts only ``said_first``, so it asks each checkpoint only those questions
(``said_first_only``): about half of them, and the choice's biggest cost.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from importlib.resources import files
from pathlib import Path
from typing import Any

from plumb.core.records import EventSink, SamplingParams
from plumb.pipeline.compare import CompareOptions, compare
from plumb.pipeline.learn import SENTENCE_END
from plumb.pipeline.session import Session
from plumb.pipeline.stats import Rate

SETS = {"probe": "probe_questions.jsonl", "probe-dev": "probe_dev_questions.jsonl"}  # split -> bundled file
KEEP = 0.95
GREEDY = SamplingParams(n=1, temperature=0.0, max_tokens=48, seed=0)  # how the probe asks: one short answer


@dataclass
class Probe:
    n: int = 0
    base_right: int = 0
    tuned_right: int = 0
    kept: Rate = field(default_factory=lambda: Rate(0, 0))  # of those the base got right, the tuned still right
    said_first: Rate = field(default_factory=lambda: Rate(0, 0))  # the same, of those the base said first
    lost: list[dict[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.kept.n or self.kept.value >= KEEP

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "base_right": self.base_right, "tuned_right": self.tuned_right,
                "kept": self.kept.to_dict(),
                "said_first": self.said_first.to_dict(), "threshold": KEEP, "ok": self.ok, "lost": self.lost}


def right(answer: str, accepted: list[str]) -> bool:
    """Whether ``answer`` holds an accepted answer, or its plural, as a whole word."""
    forms = [re.escape(a) + "(?:s|es)?" + (f"|{re.escape(a[:-1])}ies" if a.endswith("y") else "") for a in accepted]
    return any(re.search(rf"(?<!\w)(?:{f})(?!\w)", answer, re.IGNORECASE) for f in forms)


def first_sentence(text: str) -> str:
    body = text.strip()
    end = SENTENCE_END.search(body)
    return body[:end.end()].rstrip() if end else body


def _questions(session: Session, split: str) -> dict[int, list[str]]:
    """The set's prompts in the store (imported once), prompt id -> accepted answers."""
    store = session.store
    if not store.one("SELECT 1 FROM prompts WHERE split = ? LIMIT 1", (split,)):
        records = [json.loads(line) for line in
                   Path(str(files("plumb.data") / SETS[split])).read_text().splitlines() if line.strip()]
        with store.transaction():
            for r in records:
                store.add_prompt([{"role": "user", "content": r["q"]}], {"meta": {"accept": r["a"]}},
                                 split=split, source=f"bundled:{SETS[split]}")
    return {p["id"]: json.loads(p["task"])["meta"]["accept"] for p in store.prompts(split)}


def probe(session: Session, base_gguf: str, adapter_gguf: str, constitution: str | None = None,
          sink: EventSink | None = None, limit: int | None = None, split: str = "probe",
          backend: str = "llamacpp", said_first_only: bool = False, scale: float = 1.0) -> Probe:
    """Base and tuned on the split's first ``limit`` questions; with ``said_first_only`` the tuned model is
    asked only those the base answers in its first sentence (``kept`` is then ``said_first``)."""
    accepted = _questions(session, split)
    opts = CompareOptions(base_gguf, adapter_gguf, split=split, params=GREEDY, constitution=constitution,
                          limit=limit, backend=backend, scale=scale)
    if said_first_only:  # the base's answers are stored: asked once, whatever adapter sits beside it
        base = compare(session, replace(opts, sides=("base",)))
        ids = tuple(r.prompt_id for r in base.rows if right(first_sentence(r.base), accepted[r.prompt_id]))
        if not ids:
            return Probe(n=len(base.rows), base_right=sum(right(r.base, accepted[r.prompt_id]) for r in base.rows))
        opts = replace(opts, prompt_ids=ids)
    result = compare(session, opts, sink)
    out = Probe(n=len(result.rows))
    kept, first, first_kept = 0, 0, 0
    for row in result.rows:
        accept = accepted[row.prompt_id]
        base_ok, tuned_ok = right(row.base, accept), right(row.tuned, accept)
        out.base_right += base_ok
        out.tuned_right += tuned_ok
        if base_ok:
            kept += tuned_ok
            said_first = right(first_sentence(row.base), accept)
            first, first_kept = first + said_first, first_kept + (said_first and tuned_ok)
            if not tuned_ok:
                out.lost.append({"question": row.prompt, "base": row.base, "tuned": row.tuned,
                                 "base_said_first": said_first})
    out.kept, out.said_first = Rate(kept, out.base_right), Rate(first_kept, first)
    return out
