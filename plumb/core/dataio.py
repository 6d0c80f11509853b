"""JSONL import and export in the shapes the ecosystem uses.

Accepted lines (``prompt`` may be a string or a list of chat messages; the
answers may be strings or single assistant messages, as in TRL's
conversational format):

* prompt:      ``{"prompt": ...}`` with optional task fields ``tests``, ``answer``, ``schema``, ``meta``
* chat:        ``{"messages": [...]}``; a final assistant turn is kept as a reference answer
* preference:  ``{"prompt": ..., "chosen": ..., "rejected": ...}``, optionally ``"p"``: the
               probability that chosen is better (a soft label; 1 when absent)
* unpaired:    ``{"prompt": ..., "completion": ..., "label": true|false}``

An import is all or nothing: every line is parsed and checked first, and a
file with any bad line imports nothing and reports ``FILE:LINE: message`` for
each one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plumb.core.errors import PlumbError, ValidationFailed
from plumb.core.records import Judgment
from plumb.core.store import Provenance, Store

ROLES = {"system", "user", "assistant"}
TASK_KEYS = {"tests", "answer", "schema", "meta"}
SHAPES = {
    "preference": {"prompt", "chosen", "rejected"},
    "unpaired": {"prompt", "completion", "label"},
    "chat": {"messages"},
    "prompt": {"prompt"},
}


@dataclass
class Parsed:
    shape: str
    messages: list[dict[str, str]]
    task: dict[str, Any] | None = None
    answers: dict[str, Any] = field(default_factory=dict)


def _messages(value: Any, what: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"'{what}' is empty")
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and value:
        out = []
        for i, m in enumerate(value):
            if not isinstance(m, dict) or set(m) - {"role", "content"} or "role" not in m or "content" not in m:
                raise ValueError(f"'{what}[{i}]' must be an object with 'role' and 'content'")
            if m["role"] not in ROLES:
                raise ValueError(f"'{what}[{i}].role' is {m['role']!r}; expected one of {sorted(ROLES)}")
            if not isinstance(m["content"], str):
                raise ValueError(f"'{what}[{i}].content' must be a string")
            out.append({"role": m["role"], "content": m["content"]})
        return out
    raise ValueError(f"'{what}' must be a non-empty string or a list of chat messages")


def _answer(value: Any, what: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        m = value[0]
        if m.get("role") == "assistant" and isinstance(m.get("content"), str):
            return m["content"]
    raise ValueError(f"'{what}' must be a string or a single assistant message")


def parse_line(obj: Any) -> Parsed:
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    keys = set(obj)
    for shape, required in SHAPES.items():
        if required <= keys:
            break
    else:
        raise ValueError(
            f"unrecognised line with keys {sorted(keys)}; expected one of: "
            "{prompt}, {messages}, {prompt, chosen, rejected}, {prompt, completion, label}"
        )
    optional = TASK_KEYS if shape in ("prompt", "chat") else {"p"} if shape == "preference" else set()
    extra = keys - required - optional
    if extra:
        raise ValueError(f"unknown keys {sorted(extra)} for a {shape} line")
    if shape == "chat":
        msgs = _messages(obj["messages"], "messages")
        answers = {}
        if msgs[-1]["role"] == "assistant":
            answers["reference"] = msgs.pop()["content"]
        if not msgs or msgs[-1]["role"] != "user":
            raise ValueError("'messages' must end with a user turn (optionally followed by one assistant answer)")
        return Parsed(shape, msgs, _task(obj), answers)
    msgs = _messages(obj["prompt"], "prompt")
    if msgs[-1]["role"] != "user":
        raise ValueError("'prompt' must end with a user turn")
    if shape == "prompt":
        return Parsed(shape, msgs, _task(obj))
    if shape == "preference":
        chosen, rejected = _answer(obj["chosen"], "chosen"), _answer(obj["rejected"], "rejected")
        if chosen.strip() == rejected.strip():
            raise ValueError("'chosen' and 'rejected' are the same text: the pair teaches nothing")
        if not chosen.strip() or not rejected.strip():
            raise ValueError("'chosen' and 'rejected' must both be non-empty")
        p = obj.get("p", 1.0)
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.5 <= p <= 1:
            raise ValueError(f"'p' (the probability that chosen is better) must be a number in [0.5, 1], got {p!r}")
        return Parsed(shape, msgs, None, {"chosen": chosen, "rejected": rejected, "p": float(p)})
    if not isinstance(obj["label"], bool):
        raise ValueError(f"'label' must be true or false, got {obj['label']!r}")
    completion = _answer(obj["completion"], "completion")
    if not completion.strip():
        raise ValueError("'completion' is empty")
    return Parsed(shape, msgs, None, {"completion": completion, "label": obj["label"]})


def _task(obj: dict[str, Any]) -> dict[str, Any] | None:
    task = {k: obj[k] for k in TASK_KEYS if k in obj}
    if "tests" in task and not isinstance(task["tests"], str):
        raise ValueError("'tests' must be a string of Python test code")
    if "schema" in task and not isinstance(task["schema"], dict):
        raise ValueError("'schema' must be a JSON object (a JSON Schema)")
    return task or None


def read_jsonl(path: str | Path) -> list[Parsed]:
    """Parse a whole file; raise ValidationFailed listing every bad line."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise PlumbError(f"{path}: no such file.", exit_code=2) from None
    except OSError as exc:
        raise PlumbError(f"{path}: cannot read: {exc.strerror or exc}.", exit_code=2) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ValidationFailed([f"{path}:{line}: not UTF-8 text ({exc.reason})"]) from None
    parsed, problems = [], []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{path}:{n}: invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        try:
            parsed.append(parse_line(obj))
        except ValueError as exc:
            problems.append(f"{path}:{n}: {exc}")
    if problems:
        raise ValidationFailed(problems, f"{path}: {len(problems)} bad line(s); nothing imported")
    if not parsed:
        raise ValidationFailed([f"{path}:1: the file holds no records"])
    return parsed


def import_records(store: Store, records: list[Parsed], source: str, split: str = "train") -> dict[str, int]:
    """Insert parsed records in one transaction; return counts per shape."""
    prov = Provenance(plugin="import", params={"source": source})
    counts = {s: 0 for s in SHAPES}
    with store.transaction():
        for r in records:
            pid = store.add_prompt(r.messages, r.task, split=split, source=source)
            if r.shape == "preference":
                a = store.add_sample(pid, r.answers["chosen"], prov, kind="import")
                b = store.add_sample(pid, r.answers["rejected"], prov, kind="import")
                store.add_judgment(pid, a, b, Judgment("a", r.answers["p"], judge="import", source="import"), prov)
            elif r.shape == "unpaired":
                s = store.add_sample(pid, r.answers["completion"], prov, kind="import")
                store.add_label(s, r.answers["label"], judge="import", prov=prov)
            elif "reference" in r.answers:
                store.add_sample(pid, r.answers["reference"], prov, kind="reference")
            counts[r.shape] += 1
    return counts


def import_file(store: Store, path: str | Path, split: str = "train") -> dict[str, int]:
    return import_records(store, read_jsonl(path), source=str(path), split=split)


def read_task(path: str | Path) -> "Task":
    """One task from a JSON file in the import's task shape (prompt, tests, answer, schema, meta)."""
    from plumb.core.records import Chat, Task

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise PlumbError(f"{path}: no such task file.", exit_code=2) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PlumbError(f"{path}: cannot read: {exc}.", exit_code=2) from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationFailed([f"{path}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})"]) from None
    try:
        parsed = parse_line(obj)
    except ValueError as exc:
        raise ValidationFailed([f"{path}:1: {exc}"]) from None
    if parsed.shape != "prompt":
        raise ValidationFailed([f"{path}:1: a task is a prompt with optional tests, answer, schema and meta; "
                                f"this is a {parsed.shape} record"])
    task = parsed.task or {}
    return Task(Chat.from_dicts(parsed.messages), task.get("tests"), task.get("answer"), task.get("schema"),
                task.get("meta", {}))
