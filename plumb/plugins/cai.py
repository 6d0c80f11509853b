"""Constitutional AI, phase 1: critique a draft against a principle, then revise it.

For each request and each round: pick a principle (the request's, in turn, or
one drawn by weight — seeded by the draft, so a rerun picks the same), ask the
critic to say concretely where the current answer breaks it, then ask for a
revision that fixes exactly that. Round k works on round k-1's revision. The
critic is any model (``ctx.generate``): the same local model (self-critique)
or a stronger one. Requests are batched per round, so a llama.cpp critic
reuses what it can of the shared prompt.

Instructions come from the principle's ``critique`` / ``revision`` fields when
set, else from ``Principle.critique_request()`` / ``revision_request()``. The
request and answers are quoted between tags as material, never as
instructions. Judging whether a revision is usable (empty, a copy of the
draft, talk about the critique, a broken check) is the pipeline's job
(``plumb.pipeline.critique``), the same for every critique plugin.
"""

from __future__ import annotations

import hashlib
import random
import re

from plumb.core.hookspecs import hookimpl
from plumb.core.records import Chat, Critique, CritiqueRequest, SamplingParams

CRITIQUE = SamplingParams(n=1, temperature=0.0, max_tokens=96)  # "one to three sentences"
REVISION = SamplingParams(n=1, temperature=0.0, max_tokens=192)
_TAGS = re.compile(r"</?\s*(request|response|critique)\s*>", re.IGNORECASE)
_PREAMBLE = re.compile(r"^\s*(here is |here's )?(the |my |a )?(revised|rewritten|improved|updated) "
                       r"(response|answer|version)\s*(is)?\s*[:\-]\s*", re.IGNORECASE)


def quote(text: str) -> str:
    """Text to put between our tags: a tag inside it cannot close ours."""
    return _TAGS.sub(lambda m: m.group(0).replace("<", "&lt;"), text)


def pick(constitution, request: CritiqueRequest, round_: int):
    if request.principles:
        return constitution.principle(request.principles[(round_ - 1) % len(request.principles)])
    seed = int(hashlib.sha256(f"{request.draft}\0{round_}".encode()).hexdigest()[:12], 16)
    ps = constitution.principles
    return random.Random(seed).choices(ps, weights=[p.weight for p in ps])[0]


def critique_chat(chat: Chat, answer: str, principle) -> Chat:
    return Chat.from_user(
        f"<request>\n{quote(chat.last_user)}\n</request>\n\n<response>\n{quote(answer)}\n</response>\n\n"
        f"{principle.critique_request()}\nSay concretely, in one to three sentences, where the response falls "
        "short. Do not rewrite it.")


def revision_chat(chat: Chat, answer: str, principle, critique: str) -> Chat:
    return Chat.from_user(
        f"<request>\n{quote(chat.last_user)}\n</request>\n\n<response>\n{quote(answer)}\n</response>\n\n"
        f"<critique>\n{quote(critique)}\n</critique>\n\n{principle.revision_request()}\nFix exactly what the "
        "critique points out. Reply with the new response to the request only: no preamble, and no mention of "
        "the critique.")


def clean(revision: str) -> str:
    """Drop a 'Here is the revised response:' preamble; the answer is what follows it."""
    return _PREAMBLE.sub("", revision.strip(), count=1).strip()


@hookimpl
def plumb_critique(ctx, constitution, requests: list[CritiqueRequest], critic) -> list[list[Critique]]:
    current = [r.draft for r in requests]
    out: list[list[Critique]] = [[] for _ in requests]
    for k in range(1, max((r.rounds for r in requests), default=0) + 1):
        ctx.check_cancelled()
        active = [i for i, r in enumerate(requests) if r.rounds >= k]
        principles = {i: pick(constitution, requests[i], k) for i in active}
        critiques = ctx.generate(critic, [critique_chat(requests[i].chat, current[i], principles[i])
                                          for i in active], CRITIQUE)
        texts = {i: c[0].text.strip() for i, c in zip(active, critiques)}
        revisions = ctx.generate(critic, [revision_chat(requests[i].chat, current[i], principles[i], texts[i])
                                          for i in active], REVISION)
        for i, rev in zip(active, revisions):
            revised = clean(rev[0].text)
            out[i].append(Critique(principles[i].id, texts[i], revised, str(critic), round=k))
            current[i] = revised or current[i]  # an empty revision is no new answer to critique
    return out
