"""Verifiers for answers that can be checked: exact, numeric, regex format, JSON schema, length.

Each is a per-item ``score(task, completion)`` that returns None for a task
that is not its kind, and never raises for a bad completion (it scores 0 and
says why). The task fields they read are those of ``plumb data import``
(``answer``, ``schema``, ``meta``):

* ``exact``        task.answer: the completion's final answer equals it, normalised
                   (case, spaces, a trailing period, ``$``); the final answer is the
                   text after the last ``####``, else the last ``\\boxed{...}``, else
                   the whole text.
* ``numeric``      task.answer is a number: the final answer's last number equals
                   it (``1,000``, ``3/4``, ``50%`` read as numbers; relative
                   tolerance ``meta.tolerance``, default 1e-6).
* ``format``       task.meta.regex: the completion matches the pattern.
* ``json-schema``  task.schema: the completion (or its first fenced JSON block) is
                   JSON valid under the schema.
* ``length``       task.meta.max_words: 1 within the limit, then falling linearly
                   to 0 at twice the limit.
"""

from __future__ import annotations

import json
import re
from fractions import Fraction

from plumb.core.hookspecs import hookimpl
from plumb.core.records import Completion, Reward, Task

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?%?|-?\.\d+")


def final_answer(text: str) -> str:
    """The part of a completion that states its answer: after '####', in the last \\boxed{}, or all of it."""
    if "####" in text:
        return text.rsplit("####", 1)[1].strip()
    start = text.rfind("\\boxed{")
    if start >= 0:
        depth, i = 1, start + len("\\boxed{")
        for j in range(i, len(text)):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                return text[i:j].strip()
    return text.strip()


def _unwrap_text_macros(text: str) -> str:
    """``\\text{x}`` -> ``x``, in one pass (a regex here took quadratic time on many unclosed macros)."""
    out, i = [], 0
    while (j := text.find("\\text{", i)) >= 0 and (k := text.find("}", j + 6)) >= 0:
        out += [text[i:j], text[j + 6:k]]
        i = k + 1
    return "".join(out) + text[i:]


def normalise(text: str) -> str:
    text = _unwrap_text_macros(text.strip().strip("$").strip())
    return " ".join(text.lower().rstrip(".").split())


def to_number(text: str) -> float | None:
    text = text.strip().replace(",", "").replace("$", "")
    try:
        if text.endswith("%"):
            return float(text[:-1]) / 100
        return float(Fraction(text)) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        return None


def exact(task: Task, completion: Completion) -> Reward | None:
    if task.answer is None or task.check is not None:
        return None
    got, want = normalise(final_answer(completion.text)), normalise(str(task.answer))
    return Reward("exact", float(got == want), f"answer {got[:60]!r}, expected {want[:60]!r}")


def numeric(task: Task, completion: Completion) -> Reward | None:
    if task.answer is None or task.check is not None:
        return None
    want = to_number(str(task.answer))
    if want is None:
        return None
    found = _NUMBER.findall(final_answer(completion.text))
    got = to_number(found[-1]) if found else None
    if got is None:
        return Reward("numeric", 0.0, "no number in the answer")
    tol = float(task.meta.get("tolerance", 1e-6))
    ok = abs(got - want) <= tol * max(1.0, abs(want))
    return Reward("numeric", float(ok), f"{got:g} vs expected {want:g}")


def format_(task: Task, completion: Completion) -> Reward | None:
    pattern = task.meta.get("regex")
    if pattern is None or task.check is not None:
        return None
    try:
        found = re.search(pattern, completion.text, re.DOTALL) is not None
    except re.error as exc:
        return Reward("format", 0.0, f"the task's pattern is not a valid regex: {exc}", status="error")
    return Reward("format", float(found), "matches" if found else f"does not match {pattern!r}")


def _fenced_json(text: str) -> str:
    """The first ```(json) fenced block's body, else the text: linear in the text, as the regex
    ```(?:json)?\\s*\\n(.*?)``` was not (every unclosed fence rescanned the rest)."""
    start = 0
    while (j := text.find("```", start)) >= 0:
        k = j + 3
        if text.startswith("json", k):
            k += 4
        while k < len(text) and text[k] in " \t\r\f\v":
            k += 1
        if k < len(text) and text[k] == "\n":
            end = text.find("```", k + 1)
            return text[k + 1:end] if end >= 0 else text
        start = j + 3
    return text


def json_schema(task: Task, completion: Completion) -> Reward | None:
    if task.schema is None or task.check is not None:
        return None
    import jsonschema

    text = completion.text.strip()
    try:
        value = json.loads(_fenced_json(text))
    except json.JSONDecodeError as exc:
        return Reward("json-schema", 0.0, f"not JSON: {exc.msg} at line {exc.lineno}")
    try:
        jsonschema.validate(value, task.schema)
    except jsonschema.ValidationError as exc:
        return Reward("json-schema", 0.0, f"invalid at {'/'.join(map(str, exc.absolute_path)) or '(root)'}: "
                                          f"{exc.message[:200]}")
    except jsonschema.SchemaError as exc:
        return Reward("json-schema", 0.0, f"the task's schema is invalid: {exc.message[:200]}", status="error")
    return Reward("json-schema", 1.0, "valid")


def length(task: Task, completion: Completion) -> Reward | None:
    limit = task.meta.get("max_words")
    if limit is None or task.check is not None:
        return None
    n = len(completion.text.split())
    value = 1.0 if n <= limit else max(0.0, 1.0 - (n - limit) / limit)
    return Reward("length", value, f"{n} words (limit {limit})")


@hookimpl
def plumb_register_verifiers(register) -> None:
    register("exact", "1 if the final answer (after ####, in \\boxed{}, or the text) equals the task's answer",
             score=exact)
    register("numeric", "1 if the final answer's number equals the task's numeric answer", score=numeric)
    register("format", "1 if the completion matches the task's meta.regex", score=format_)
    register("json-schema", "1 if the completion is JSON valid under the task's schema", score=json_schema)
    register("length", "1 within the task's meta.max_words, falling to 0 at twice the limit", score=length)
