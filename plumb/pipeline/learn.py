"""What `plumb tune` learns from: the k answers of each train prompt ranked by the checks.

Every answer gets its graded checks score (``plumb.core.checks``: the principles' weighted
mean, 1.0 when it passes everything). With ``prefixes`` (tune's default), each answer cut after
each of its sentences is a candidate too: a constitution that asks for less (fewer words, an
answer that stops after its point, a closing question) then gets a target the model already
wrote, word for word, instead of a different, vaguer sample that happens to be short.

Candidates whose scores tie (within ``MIN_GAP`` of the best) are ranked by how much they agree
with the prompt's other sampled answers (``agreement``: the mean overlap of their content words
beyond the question's own, a minimum-Bayes-risk choice; counting the question's words made
restating it the surest way to agree), then the longer first. Of several answers that all fit the
constitution, the one saying what most samples say is more often right ("about 52 weeks", not a
story about lunar months): a target that is only in style can teach the model to drop or change
what it knows. From the ranking, each method takes its rows:

* ``dpo``  per prompt the pair with the largest score gap (best vs worst), when the gap is
           at least ``MIN_GAP``; the largest gaps first (they carry the clearest signal);
* ``sft``  per prompt the best answer (rejection sampling, best-of-k), when it beats the
           prompt's worst answer by ``MIN_GAP`` or passes every check;
* ``grpo`` no rows: the checks are its rewards (``check_rewards``).

Rows are written to a JSONL file in the shapes ``plumb data import`` reads, and the train stage
trains on that file, so a rerun with the same rows reuses the finished run.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plumb.core.checks import check_texts
from plumb.core.store import Store

MIN_GAP = 0.02  # graded scores closer than this are a tie


@dataclass
class Answer:
    sample_id: int
    text: str
    score: float
    all_passed: bool
    cut: bool = False  # a sampled answer cut after one of its sentences


@dataclass
class Ranked:
    """Per train prompt (id -> messages), its answers best first."""

    messages: dict[int, list[dict[str, str]]]
    answers: dict[int, list[Answer]]

    def sampled(self) -> list[Answer]:
        """The answers as sampled (not the cut candidates)."""
        return [a for v in self.answers.values() for a in v if not a.cut]

    @property
    def n_answers(self) -> int:
        return len(self.sampled())

    def pass_share(self) -> float:
        """The share of sampled answers that pass every check."""
        return sum(a.all_passed for a in self.sampled()) / max(self.n_answers, 1)

    def mean_score(self) -> float:
        return sum(a.score for a in self.sampled()) / max(self.n_answers, 1)


def answers_of(store: Store, model: str, prompt_ids: list[int]) -> list[dict[str, Any]]:
    """The samples ``model`` made for these prompts (any sampling parameters), and the usable (unflagged)
    last revisions of them: the candidates a round ranks."""
    if not prompt_ids:
        return []
    marks = ",".join("?" * len(prompt_ids))
    rows = store.query(
        f"SELECT s.id, s.prompt_id, s.text FROM samples s WHERE s.kind = 'sample' AND s.model = ? AND "
        f"s.prompt_id IN ({marks}) ORDER BY s.id", (model, *prompt_ids))
    revised = store.query(
        f"SELECT s.id, s.prompt_id, s.text FROM critiques c JOIN samples s ON s.id = c.revision_id JOIN samples d "
        f"ON d.id = c.sample_id WHERE c.flags IS NULL AND d.model = ? AND s.prompt_id IN ({marks}) AND NOT EXISTS "
        f"(SELECT 1 FROM critiques n WHERE n.sample_id = s.id) ORDER BY s.id", (model, *prompt_ids))
    return [dict(r) for r in rows] + [dict(r) for r in revised]


_WORD = re.compile(r"[a-z0-9']+")
_FUNCTION_WORDS = frozenset("the and are for that this with you your can its was were has have not but from "
                            "they their them there which what when how why who will would also into than then "
                            "these those such some more most very just about".split())


def content_words(text: str) -> frozenset[str]:
    """The lower-cased numbers, and words of three or more letters that carry content (not
    ``_FUNCTION_WORDS``)."""
    return frozenset(w for w in _WORD.findall(text.lower())
                     if w.isdigit() or (len(w) > 2 and w not in _FUNCTION_WORDS))


def agreement(text: str, others: list[frozenset[str]], asked: frozenset[str] = frozenset()) -> float:
    """Mean F1 overlap of ``text``'s content words with each of ``others`` (0 with none); the words of
    the question (``asked``) do not count, or restating it would be the surest way to agree."""
    mine = content_words(text) - asked
    others = [o - asked for o in others]
    if not mine or not others:
        return 0.0
    return sum(2 * len(mine & o) / (len(mine) + len(o)) for o in others if o) / len(others)


SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s|$)|\n")
MIN_CUT_WORDS = 4  # shorter cuts are fragments ("1.", "Dr."), not answers


def prefixes(text: str) -> list[str]:
    """``text`` cut after each of its sentences (or lines) but the last, shortest first: the earlier
    places the answer could have stopped (from ``MIN_CUT_WORDS`` words on; not after a lead-in line)."""
    body = text.rstrip()
    cuts = []
    for m in SENTENCE_END.finditer(body):
        cut = body[:m.end()].rstrip()
        if (len(cut.split()) >= MIN_CUT_WORDS and len(cut) < len(body) and not cut.endswith((":", ","))
                and (not cuts or cut != cuts[-1])):  # a line ending in ':' or ',' leads into what follows
            cuts.append(cut)
    return cuts


def rank(session: Any, const: Any, model: str, prompt_ids: list[int], with_prefixes: bool = False) -> Ranked:
    store = session.store
    rows = answers_of(store, model, prompt_ids)
    if with_prefixes:
        rows += [{**r, "text": cut, "cut": True} for r in list(rows) for cut in prefixes(r["text"])]
    checked = check_texts(session.pm, const, [r["text"] for r in rows])
    wanted = set(prompt_ids)
    messages = {p["id"]: json.loads(p["messages"]) for p in store.prompts() if p["id"] in wanted}
    answers: dict[int, list[Answer]] = {}
    for r, c in zip(rows, checked):
        if r["text"].strip():
            answers.setdefault(r["prompt_id"], []).append(Answer(r["id"], r["text"], c.score, c.all_passed,
                                                                  r.get("cut", False)))
    for pid, v in answers.items():
        v.sort(key=lambda a: (-a.score, -len(a.text)))
        _by_agreement(v, content_words(" ".join(m["content"] for m in messages.get(pid, []))))
    return Ranked(messages, answers)


def _by_agreement(answers: list[Answer], asked: frozenset[str]) -> None:
    """Reorder the tied best (within MIN_GAP of the first) by agreement with the other sampled answers
    (not the candidate's own sample or its cuts) in what they add to the question (``asked``), the longer
    first among equals; in place."""
    top = [a for a in answers if a.score >= answers[0].score - MIN_GAP]
    if len(top) < 2:
        return
    sampled = {a.sample_id: content_words(a.text) for a in answers if not a.cut}
    agree = {id(a): agreement(a.text, [w for sid, w in sampled.items() if sid != a.sample_id], asked) for a in top}
    answers[:len(top)] = sorted(top, key=lambda a: (-round(agree[id(a)], 6), -len(a.text)))


def dpo_rows(ranked: Ranked) -> list[dict[str, Any]]:
    """Best vs worst of each prompt where they differ by at least MIN_GAP, the largest gaps first."""
    rows = []
    for pid, answers in ranked.answers.items():
        if len(answers) >= 2 and answers[0].score - answers[-1].score >= MIN_GAP:
            rows.append((answers[0].score - answers[-1].score,
                         {"prompt": ranked.messages[pid], "chosen": answers[0].text, "rejected": answers[-1].text}))
    rows.sort(key=lambda r: -r[0])
    return [r for _, r in rows]


def sft_rows(ranked: Ranked) -> list[dict[str, Any]]:
    """The best answer of each prompt where it is better than the worst, or passes every check."""
    rows = []
    for pid, answers in ranked.answers.items():
        best = answers[0]
        if best.all_passed or best.score - answers[-1].score >= MIN_GAP:
            rows.append((best.score, {"messages": ranked.messages[pid] + [{"role": "assistant",
                                                                             "content": best.text}]}))
    rows.sort(key=lambda r: -r[0])
    return [r for _, r in rows]


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)
    return path


def check_rewards(const: Any) -> dict[str, float]:
    """GRPO's reward weights from the constitution's checks, keyed by verifier (as GRPO's rewards are):
    each use of a verifier weighs its principle's weight over that principle's checks; a verifier used
    several times weighs the mean of its uses, and the weights are scaled so all uses add up to 1."""
    uses: dict[str, list[float]] = {}
    for p in const.principles:
        for c in p.checks:
            uses.setdefault(c.verifier, []).append(p.weight / len(p.checks))
    total = sum(sum(v) for v in uses.values()) or 1.0
    return {name: sum(v) / len(v) / total for name, v in uses.items()}
