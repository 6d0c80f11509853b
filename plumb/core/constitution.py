"""Constitutions: a person's principles, as a validated TOML file.

A constitution has a name, version, description, optional judging rubric and
one or more principles (id, text, optional critique/revision instructions,
weight, tags, and code-checkable ``checks``). ``load_constitution`` validates
the file and reports every problem as ``FILE:LINE: message``;
``Constitution.hash`` is a content hash that changes when any principle does
(and not when comments or whitespace do).
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from plumb.core.errors import PlumbError, ValidationFailed

_ID = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Check(_Strict):
    verifier: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)


class Principle(_Strict):
    id: str
    text: str
    critique: str | None = None
    revision: str | None = None
    weight: float = 1.0
    tags: list[str] = Field(default_factory=list)
    checks: list[Check] = Field(default_factory=list)

    @field_validator("id")
    @classmethod
    def _id_shape(cls, v: str) -> str:
        if not _ID.match(v):
            raise ValueError("id must be lowercase letters, digits, '-' or '_' (e.g. 'conclusion-first')")
        return v

    @field_validator("text")
    @classmethod
    def _not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("principle text is empty: say what the principle asks for")
        return v

    @field_validator("weight", mode="before")
    @classmethod
    def _weight(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if isinstance(v, float) and v <= 0:
            raise ValueError("weight must be greater than 0")
        return v

    def critique_request(self) -> str:
        return self.critique or (
            f"Identify specific ways in which the response fails this principle: {self.text}"
        )

    def revision_request(self) -> str:
        return self.revision or f"Rewrite the response so that it follows this principle: {self.text}"


class Judging(_Strict):
    rubric: str | None = None


class Constitution(_Strict):
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    description: str
    judging: Judging = Judging()
    principles: list[Principle] = Field(min_length=1)

    def canonical_json(self) -> str:
        """The validated content as sorted, compact JSON: what is hashed and stored."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    @property
    def hash(self) -> str:
        """sha256 of the canonical content, first 16 hex digits."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    def principle(self, pid: str) -> Principle:
        for p in self.principles:
            if p.id == pid:
                return p
        raise KeyError(pid)

    def summary(self) -> str:
        return (
            f"{self.name} v{self.version}: {len(self.principles)} principles, "
            f"{sum(len(p.checks) for p in self.principles)} checks, hash {self.hash}"
        )


# -- loading --------------------------------------------------------------------


def load_constitution(path: str | Path) -> Constitution:
    """Load and validate; raise ValidationFailed with ``FILE:LINE: message`` lines."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PlumbError(
            f"{path}: no such constitution file. `plumb constitution list` shows the shipped ones; "
            "`plumb constitution new NAME` writes a starter.",
            exit_code=2,
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationFailed([f"{path}:1: cannot read file: {exc}"]) from None
    return parse_constitution(text, str(path))


def parse_constitution(text: str, filename: str = "<string>") -> Constitution:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        line = m.group(1) if m else "1"
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        col = f" (column {m.group(2)})" if m else ""
        raise ValidationFailed([f"{filename}:{line}: invalid TOML: {msg}{col}"]) from None
    problems = _duplicate_ids(data, text, filename)
    try:
        constitution = Constitution.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(err["loc"])
            problems.append(f"{filename}:{_line_of(text, loc)}: {_describe(loc, err)}")
    if problems:
        raise ValidationFailed(sorted(problems, key=_line_number))
    return constitution


def _duplicate_ids(data: dict[str, Any], text: str, filename: str) -> list[str]:
    seen: dict[str, int] = {}
    problems = []
    principles = data.get("principles")
    for i, p in enumerate(principles if isinstance(principles, list) else []):
        pid = p.get("id") if isinstance(p, dict) else None
        if not isinstance(pid, str):
            continue
        if pid in seen:
            line = _line_of(text, ("principles", i, "id"))
            problems.append(f"{filename}:{line}: duplicate principle id {pid!r} (first used by principles[{seen[pid]}])")
        else:
            seen[pid] = i
    return problems


def _line_number(problem: str) -> int:
    m = re.search(r":(\d+): ", problem)
    return int(m.group(1)) if m else 0


def _describe(loc: tuple[Any, ...], err: dict[str, Any]) -> str:
    where = _dotted(loc)
    kind = err["type"]
    if kind == "missing":
        return f"missing required field '{where}'"
    if kind == "extra_forbidden":
        return f"unknown key '{where}' (check the spelling; see `plumb constitution new` for the schema)"
    msg = err["msg"].removeprefix("Value error, ")
    if kind.endswith("_type") or kind == "model_type":
        got = type(err.get("input")).__name__
        msg = f"{msg} (got {got})"
    return f"{where}: {msg}" if where else msg


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_HEADER = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.\-\" ]+?)\s*\]\]?\s*(#.*)?$")


def _line_of(text: str, loc: tuple[Any, ...]) -> int:
    """Best-effort line number of a key path in a TOML document.

    Finds the table header for the path (``[[principles]]`` number N,
    ``[judging]``) and then the ``key =`` line inside it; falls back to the
    header, then to line 1.
    """
    lines = text.splitlines()
    headers = []  # (line_index, dotted name)
    for i, raw in enumerate(lines):
        m = _HEADER.match(raw)
        if m:
            headers.append((i, m.group(1).replace(" ", "").replace('"', "")))

    # Walk the path: table names and array indices pick a section.
    start, end = 0, len(lines)
    section = ""
    rest = list(loc)
    while rest:
        part = rest[0]
        name = f"{section}.{part}" if section else str(part)
        matches = [i for i, h in headers if h == name and start <= i < end]
        if not matches:
            break
        rest.pop(0)
        idx = 0
        if rest and isinstance(rest[0], int):
            idx = rest.pop(0)
        if idx >= len(matches):
            break
        start = matches[idx]
        later = [i for i, h in headers if i > start and not h.startswith(name + ".")]
        end = min(later) if later else end
        section = name
    if not rest:
        return start + 1
    key = rest[0]
    if isinstance(key, str):
        pat = re.compile(rf"^\s*\"?{re.escape(key)}\"?\s*=")
        first = start + 1 if section else 0
        stop = end if section else (headers[0][0] if headers else len(lines))
        for i in range(first, stop):
            if pat.match(lines[i]):
                return i + 1
    return start + 1 if section else 1


# -- shipped constitutions and the starter template --------------------------------


def shipped_dir() -> Path:
    """Where the shipped constitutions are installed."""
    from importlib.resources import files

    return Path(str(files("plumb.constitutions")))


def shipped() -> dict[str, Path]:
    return {p.stem: p for p in sorted(shipped_dir().glob("*.toml"))}


def resolve(name_or_path: str, base_dir: Path | None = None) -> Path:
    """A path to a constitution file from a path or a shipped name."""
    p = Path(name_or_path)
    if base_dir is not None and not p.is_absolute():
        candidate = base_dir / p
        if candidate.exists():
            return candidate
    if p.exists() or p.suffix == ".toml":
        return p
    found = shipped()
    if name_or_path in found:
        return found[name_or_path]
    raise PlumbError(
        f"no constitution named {name_or_path!r}: not a file, and not one of the shipped "
        f"constitutions ({', '.join(found) or 'none'}).",
        exit_code=2,
    )


STARTER = '''# {name}: a personal constitution for plumb.
#
# Each [[principles]] block is one thing you want from the model. plumb uses
# the text to critique and revise answers, to judge pairs of answers, and (via
# `checks`) to measure by code whether tuning moved the model your way.
# Validate with:  plumb constitution check {filename}

name = "{name}"
version = "0.1"
description = "What good answers look like to me."

[judging]
# Optional: how a judge should weigh two answers against each other.
rubric = "Prefer the answer that follows more of the principles below; weigh them by weight."

[[principles]]
id = "conclusion-first"                    # unique, lowercase-kebab
text = "Open with the answer or conclusion, then give the detail that supports it."
# Optional instructions for the self-critique and revision steps:
critique = "Point out where the response delays its main point behind preamble or background."
revision = "Rewrite the response so its first sentence states the answer."
weight = 1.0                               # optional, > 0
tags = ["style"]                           # optional

# Optional: code-checkable measures of this principle (verifier plugins).
[[principles.checks]]
verifier = "max_words"
params = {{ n = 120 }}

[[principles]]
id = "plain-words"
text = "Use plain, concrete words; no piled-up adjectives and no filler like 'Great question!'."
'''


def starter_text(name: str) -> str:
    if not _ID.match(name):
        raise PlumbError(
            f"{name!r} is not a valid constitution name: use lowercase letters, digits, '-' or '_'.",
            exit_code=2,
        )
    return STARTER.format(name=name, filename=f"{name}.toml")
