"""The alignment-tax probe: tuning a style must not erase what the model knows.

Short questions with known answers (capitals, counts, everyday facts), asked closed-book in a 4-shot format:
four worked question/answer turns (``SHOTS``: facts no probe, tune or dev set asks) come before the question,
so base and tuned both answer in a word or a phrase, whatever style either has learnt (the few-shot format
knowledge probes use, e.g. Gekhman et al. 2024). An answer is right when it contains one of the accepted
answers (or its plural) as a whole word.

The facts the base knows are the questions it answers right greedily. On those, each side answers every
question ``SAMPLED.n`` times at temperature 0.7; the share right is the question's P(correct), and ``often``
is the tuned model's summed P(correct) over the base's, with a 95% bootstrap interval over the questions: how
often the tuned model answers what the base knew, as a share of how often the base does. It passes at
``KEEP`` (0.95). ``kept``, the greedy count (one answer per side), is reported beside it: on the 135M starter
a fact the base barely knows flips under any small change of the weights (at a tenth of a tuned update the
greedy count lost 3 of 27 facts, bench/RESULTS.md), so one greedy answer is a noisy measure of how often.

``free_form`` asks the same questions plainly (greedy, 48 tokens), as a person would: the facts kept anywhere
in the answer, and of those the base says in its first sentence. A style that shortens answers loses there
the facts a long answer mentions on the way, which the closed-book format does not charge to it; the report
shows both.

Two sets that share no question: ``probe_questions.jsonl`` is the held-out measure the report gives (splits
``facts`` closed-book, ``probe`` free-form); ``probe_dev_questions.jsonl`` (split ``facts-dev``) is what
`plumb tune` chooses its checkpoint by, asking each candidate only the facts the base knows (``known_only``).
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
from plumb.pipeline.stats import Rate, Ratio, ratio

QUESTIONS = {"report": "probe_questions.jsonl", "dev": "probe_dev_questions.jsonl"}  # the two bundled sets
SPLITS = {"facts": ("report", True), "facts-dev": ("dev", True), "probe": ("report", False)}  # -> (set, shots)
SHOTS = (("What is the capital of Poland?", "Warsaw."), ("How many legs does a bird have?", "Two."),
         ("What color is snow?", "White."), ("Who wrote Pride and Prejudice?", "Jane Austen."))
KEEP = 0.95
GREEDY = SamplingParams(n=1, temperature=0.0, max_tokens=24, seed=0)  # closed-book: which facts the base knows
SAMPLED = SamplingParams(n=8, temperature=0.7, top_p=1.0, max_tokens=24, seed=0)  # how often each side says them
FREE_FORM = SamplingParams(n=1, temperature=0.0, max_tokens=48, seed=0)  # the plain question, one short answer


@dataclass
class Probe:
    n: int = 0
    base_right: int = 0  # greedy, closed-book
    tuned_right: int = 0  # greedy, of the questions the tuned model was asked
    often: Ratio | None = None  # sampled P(correct), tuned over base, on the facts the base knows: the bar
    kept: Rate = field(default_factory=lambda: Rate(0, 0))  # greedy: of those the base got right, tuned still right
    lost: list[dict[str, str]] = field(default_factory=list)  # greedy
    free_form: dict[str, Rate] = field(default_factory=dict)  # "kept", "said_first" (the plain questions)

    @property
    def ok(self) -> bool:
        return self.often is None or not self.often.n or self.often.value >= KEEP

    def to_dict(self) -> dict[str, Any]:
        return {"format": f"{len(SHOTS)}-shot closed-book", "n": self.n, "base_right": self.base_right,
                "tuned_right": self.tuned_right, "often": self.often.to_dict() if self.often else None,
                "samples": SAMPLED.n, "temperature": SAMPLED.temperature, "kept": self.kept.to_dict(),
                "threshold": KEEP, "ok": self.ok, "lost": self.lost,
                "free_form": {k: v.to_dict() for k, v in self.free_form.items()}}


def right(answer: str, accepted: list[str]) -> bool:
    """Whether ``answer`` holds an accepted answer, or its plural, as a whole word."""
    forms = [re.escape(a) + "(?:s|es)?" + (f"|{re.escape(a[:-1])}ies" if a.endswith("y") else "") for a in accepted]
    return any(re.search(rf"(?<!\w)(?:{f})(?!\w)", answer, re.IGNORECASE) for f in forms)


def first_sentence(text: str) -> str:
    body = text.strip()
    end = SENTENCE_END.search(body)
    return body[:end.end()].rstrip() if end else body


def messages(question: str, shots: bool) -> list[dict[str, str]]:
    """The chat one question is asked in: after ``SHOTS`` as worked turns (closed-book), or plainly."""
    turns = [{"role": r, "content": c} for q, a in SHOTS for r, c in (("user", q), ("assistant", a))] if shots else []
    return turns + [{"role": "user", "content": question}]


def _questions(session: Session, split: str) -> dict[int, list[str]]:
    """The split's prompts in the store (imported once), prompt id -> accepted answers."""
    store = session.store
    if not store.one("SELECT 1 FROM prompts WHERE split = ? LIMIT 1", (split,)):
        which, shots = SPLITS[split]
        records = [json.loads(line) for line in
                   Path(str(files("plumb.data") / QUESTIONS[which])).read_text().splitlines() if line.strip()]
        with store.transaction():
            for r in records:
                store.add_prompt(messages(r["q"], shots), {"meta": {"accept": r["a"]}}, split=split,
                                 source=f"bundled:{QUESTIONS[which]}")
    return {p["id"]: json.loads(p["task"])["meta"]["accept"] for p in store.prompts(split)}


def probe(session: Session, base_gguf: str, adapter_gguf: str, constitution: str | None = None,
          sink: EventSink | None = None, limit: int | None = None, split: str = "facts",
          backend: str = "llamacpp", known_only: bool = False, scale: float = 1.0) -> Probe:
    """Base and tuned on the split's first ``limit`` questions, closed-book: greedily, then ``SAMPLED`` on the
    facts the base knows. With ``known_only`` the tuned model is asked only those (all the bar counts)."""
    accepted = _questions(session, split)
    opts = CompareOptions(base_gguf, adapter_gguf, split=split, params=GREEDY, constitution=constitution,
                          limit=limit, backend=backend, scale=scale)
    base = compare(session, replace(opts, sides=("base",)))  # stored: asked once, whatever adapter sits beside it
    known = tuple(r.prompt_id for r in base.rows if right(r.base, accepted[r.prompt_id]))
    out = Probe(n=len(base.rows), base_right=len(known))
    if not known:
        return out
    greedy = compare(session, replace(opts, prompt_ids=known) if known_only else opts, sink)
    for row in greedy.rows:
        tuned_ok = right(row.tuned, accepted[row.prompt_id])
        out.tuned_right += tuned_ok
        if row.prompt_id in known and not tuned_ok:
            out.lost.append({"question": row.prompt, "base": row.base, "tuned": row.tuned})
    out.kept = Rate(len(known) - len(out.lost), len(known))
    sampled = compare(session, replace(opts, params=SAMPLED, prompt_ids=known), sink)
    p = {side: [sum(right(a, accepted[row.prompt_id]) for a in answers) / len(answers)
                for row, answers in zip(sampled.rows, sampled.samples[side])] for side in ("base", "tuned")}
    out.often = ratio(p["base"], p["tuned"])
    return out


def free_form(session: Session, base_gguf: str, adapter_gguf: str, constitution: str | None = None,
              sink: EventSink | None = None, limit: int | None = None, backend: str = "llamacpp",
              scale: float = 1.0) -> dict[str, Rate]:
    """The probe's questions asked plainly: of the facts the base says (anywhere, and in its first sentence),
    the share the tuned model still says anywhere in its answer."""
    accepted = _questions(session, "probe")
    result = compare(session, CompareOptions(base_gguf, adapter_gguf, split="probe", params=FREE_FORM,
                                             constitution=constitution, limit=limit, backend=backend,
                                             scale=scale), sink)
    known = [(right(first_sentence(r.base), accepted[r.prompt_id]), right(r.tuned, accepted[r.prompt_id]))
             for r in result.rows if right(r.base, accepted[r.prompt_id])]
    return {"kept": Rate(sum(t for _, t in known), len(known)),
            "said_first": Rate(sum(t for f, t in known if f), sum(f for f, _ in known))}
