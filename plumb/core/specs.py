"""Model specs: one string names a model everywhere (CLI, plumb.toml, TUI),
and the model files a workspace can name.

    llamacpp:PATH.gguf[+lora:ADAPTER.gguf[@SCALE]]   in-process llama.cpp
    hf:DIR_OR_HUB_ID                                 transformers (training base, GRPO sampling)
    anthropic:MODEL_NAME                             Anthropic Messages API (key from ANTHROPIC_API_KEY)
    openai:http://HOST:PORT/v1                       any OpenAI-compatible server
    starter                                          SmolLM2-135M-Instruct, pulled once per user

    NAME:TARGET                                      any backend a plugin registers

``starter`` resolves by role: the GGUF (llamacpp) for generation and serving,
the dequantized HF copy for training. Parsing accepts any ``NAME:TARGET``;
whether a plugin answers for ``NAME`` is checked against the registry
(``Registry.check_backend``) before any work starts.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from plumb.core.errors import PlumbError
from plumb.core.records import ModelSpec

FORMS = (
    "llamacpp:PATH.gguf[+lora:ADAPTER.gguf[@SCALE]], hf:DIR_OR_HUB_ID, anthropic:MODEL_NAME, "
    "openai:http://HOST:PORT/v1, starter, or NAME:TARGET for a backend a plugin registers"
)
_NAME = re.compile(r"^[A-Za-z][\w.-]*$")


def parse_spec(spec: str, role: str = "generate", fetch: bool = True) -> ModelSpec:
    """Parse a model spec string; ``role`` ("generate" or "train") resolves aliases. ``starter`` is
    pulled on first use; with ``fetch=False`` an uncached starter is an error naming the pull command."""
    text = spec.strip()
    if text in ("starter", "llamacpp:starter", "hf:starter"):
        from plumb import starter

        if text == "hf:starter" or (text == "starter" and role == "train"):
            return ModelSpec("hf", str(starter.ensure("train") if fetch else starter.hf_dir()))
        return ModelSpec("llamacpp", str(starter.ensure("generate") if fetch else starter.gguf_path()))
    backend, sep, rest = text.partition(":")
    if not sep or not _NAME.match(backend) or not rest:
        raise PlumbError(f"bad model spec {spec!r}. Accepted forms: {FORMS}.", exit_code=2)
    lora, scale = None, 1.0
    if backend == "llamacpp" and "+lora:" in rest:
        rest, lora = rest.split("+lora:", 1)
        if "@" in lora:
            lora, s = lora.rsplit("@", 1)
            try:
                scale = float(s)
            except ValueError:
                raise PlumbError(f"bad LoRA scale {s!r} in {spec!r}: expected a number, e.g. +lora:a.gguf@0.5",
                                 exit_code=2) from None
        if not lora:
            raise PlumbError(f"empty LoRA path in {spec!r}. Accepted forms: {FORMS}.", exit_code=2)
    return ModelSpec(backend, rest, lora, scale)


# -- model files a workspace can name ---------------------------------------------------

MAX_DEPTH = 3  # how deep under models/ and adapters/ to look


def human_size(size: int | None) -> str:
    if size is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return "-"


def _shown(path: Path) -> str:
    """``path`` relative to the cwd when it lies below it, else absolute: for specs to copy."""
    rel = os.path.relpath(path)
    return path.as_posix() if rel.startswith("..") else Path(rel).as_posix()


def _dir_size(d: Path) -> int:
    return sum(p.stat().st_size for p in d.iterdir() if p.is_file())


def _entry(name: str, spec: str, fmt: str, where: str, path: Path, size: int | None,
           pulled: bool = True, note: str = "") -> dict:
    return {"name": name, "spec": spec, "format": fmt, "where": where, "path": str(path),
            "size": size, "pulled": pulled, "note": note}


def _scan(base: Path, where: str) -> list[dict]:
    """GGUF files, HF model dirs (config.json) and PEFT adapter dirs under ``base``."""
    found: list[dict] = []
    if not base.is_dir():
        return found
    for dirpath, dirnames, filenames in os.walk(base):
        d = Path(dirpath)
        depth = len(d.relative_to(base).parts)
        dirnames[:] = sorted(n for n in dirnames if not n.startswith(".")) if depth < MAX_DEPTH else []
        if d != base and "config.json" in filenames:
            found.append(_entry(d.name, f"hf:{_shown(d)}", "hf", where, d, _dir_size(d)))
        elif d != base and "adapter_config.json" in filenames:
            found.append(_entry(d.name, "", "peft-lora", where, d, _dir_size(d),
                                note="a LoRA adapter for the hf: base it was trained on"))
        for n in sorted(filenames):
            if not n.endswith(".gguf"):
                continue
            p = d / n
            if where == "adapters":
                found.append(_entry(p.stem, f"llamacpp:BASE.gguf+lora:{_shown(p)}", "gguf-lora", where, p,
                                    p.stat().st_size, note="BASE.gguf: the model it was trained on"))
            else:
                found.append(_entry(p.stem, f"llamacpp:{_shown(p)}", "gguf", where, p, p.stat().st_size))
    return found


def available_models(root: Path | None) -> list[dict]:
    """Every model the workspace at ``root`` (or, with None, any workspace) can name."""
    from plumb import starter

    st = starter.status()
    models = [
        _entry("starter", "llamacpp:starter", "gguf", "user cache", Path(st["gguf"]["path"]),
               st["gguf"]["size"], st["gguf"]["pulled"], "`starter` for generating, judging, serving"),
        _entry("starter", "hf:starter", "hf", "user cache", Path(st["hf"]["path"]),
               st["hf"]["size"], st["hf"]["pulled"], "`starter` for training"),
    ]
    if root is not None:
        for sub in ("models", "adapters"):
            models += _scan(Path(root) / sub, sub)
    return models


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def check_exists(spec, root: Path | None = None) -> None:
    """Raise PlumbError, listing what is there, when ``spec`` (a ModelSpec) names a local file
    or directory that does not exist. Relative paths count from ``root`` (else the cwd).
    ``hf:`` targets that look like hub ids (``org/name``) and remote backends are not checked."""

    def missing(path: str, what: str) -> None:
        p = Path(path).expanduser()
        if not p.is_absolute() and root is not None:
            p = Path(root) / p
        ok = p.is_dir() if what == "an HF model directory" else p.is_file()
        if ok:
            return
        lines = [f"  {m['spec'] or m['path']}  [{m['format']}, {'ready' if m['pulled'] else 'not pulled'}]"
                 for m in available_models(root)]
        raise PlumbError(
            f"model {path!r} not found: expected {what} at {p}. Models this workspace can use:\n"
            + "\n".join(lines) + "\n(`plumb models` lists them; `plumb models pull starter` fetches the starter.)",
            exit_code=2)

    if spec.backend == "llamacpp":
        missing(spec.target, "a .gguf file")
        if spec.lora:
            missing(spec.lora, "a LoRA adapter .gguf file")
    elif spec.backend == "hf":
        p = Path(spec.target).expanduser()
        here = p.exists() or (root is not None and (Path(root) / p).exists())
        if here or not HUB_ID.match(spec.target):  # org/name that is not a local path: a hub id
            missing(spec.target, "an HF model directory")
