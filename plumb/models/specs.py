"""Model specs with the models plumb keeps: the starter by name, and the model files a workspace can name.

``parse_spec`` is ``plumb.core.specs.parse_spec`` plus the starter's names: ``starter`` resolves by
role to the GGUF (llamacpp) for generation and serving and to the dequantized HF copy for training,
pulled on first use. ``available_models`` lists what a workspace can name; ``check_exists`` refuses
a spec whose local file is missing, listing those.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from plumb.core import specs
from plumb.core.errors import PlumbError
from plumb.core.records import ModelSpec

FORMS = specs.FORMS


def parse_spec(spec: str, role: str = "generate", fetch: bool = True) -> ModelSpec:
    """Parse a model spec string; ``role`` ("generate" or "train") resolves aliases. ``starter`` is
    pulled on first use; with ``fetch=False`` an uncached starter is an error naming the pull command."""
    text = spec.strip()
    if text in specs.STARTER:
        from plumb.models import starter

        if text == "hf:starter" or (text == "starter" and role == "train"):
            return ModelSpec("hf", str(starter.ensure("train") if fetch else starter.hf_dir()))
        return ModelSpec("llamacpp", str(starter.ensure("generate") if fetch else starter.gguf_path()))
    return specs.parse_spec(text)


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
    from plumb.models import starter

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
