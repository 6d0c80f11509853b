"""`plumb export gguf`: a Hugging Face model or a LoRA adapter -> GGUF for llama.cpp.

    plumb export gguf --model hf:DIR --out model.gguf [--quant f16|q8_0|q4_k_m]
    plumb export gguf --adapter adapters/run-3 --base hf:DIR --out tuned.gguf
    plumb export gguf --adapter adapters/run-3 --merge --out tuned.q8_0.gguf --quant q8_0

Inside a workspace the written file is recorded as an artifact; an adapter goes through the export
stage (``pipeline.export.export_adapter``: its sha256 recorded, an unchanged file not written again).
"""

from __future__ import annotations

from pathlib import Path

import click

from plumb.core.errors import PlumbError


@click.group()
def export() -> None:
    """Export models and adapters for other tools."""


def _hf_dir(spec: str, what: str) -> str:
    from plumb.models.specs import parse_spec

    parsed = parse_spec(spec, role="train")
    if parsed.backend != "hf":
        raise PlumbError(f"{what} must be a Hugging Face model (hf:DIR or starter), not {spec!r}.", exit_code=2)
    return parsed.target


@export.command()
@click.option("--model", "model_spec", help="The model to convert: hf:DIR (or starter).")
@click.option("--adapter", type=click.Path(file_okay=False), help="A peft LoRA adapter directory to convert.")
@click.option("--base", "base_spec", help="With --adapter: the base model, hf:DIR (default: the adapter's own).")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="The GGUF file to write.")
@click.option("--merge", is_flag=True, help="With --adapter: merge it into the base and export one model.")
@click.option("--quant", type=click.Choice(["f32", "f16", "q8_0", "q4_k_m"]), default="f16", show_default=True,
              help="Weight type of a model export (adapters are written in f32).")
@click.pass_context
def gguf(ctx: click.Context, model_spec: str | None, adapter: str | None, base_spec: str | None, out: str,
         merge: bool, quant: str) -> None:
    """Convert a Llama-family model or a LoRA adapter to GGUF."""
    from plumb.export import export_gguf, export_merged

    if bool(model_spec) == bool(adapter):
        raise PlumbError("give exactly one of --model hf:DIR (a model) or --adapter DIR (a LoRA adapter).",
                         exit_code=2)
    if merge and not adapter:
        raise PlumbError("--merge goes with --adapter DIR (it merges that adapter into its base).", exit_code=2)
    base = _hf_dir(base_spec, "--base") if base_spec else None
    if adapter and merge:
        path = export_merged(adapter, out, base, quant)
        kind = f"gguf-merged-{quant}"
    elif adapter:  # the export stage: recorded with its sha256 in a workspace, skipped when already written
        from plumb.commands import session_from
        from plumb.pipeline.export import export_adapter

        with session_from(ctx, scratch_ok=True) as session:
            path = export_adapter(session, adapter, base, out_path=str(Path(out).resolve()),
                                  sink=lambda e: e.kind == "log" and click.echo(e.message))
        click.echo(f"{path} ({Path(path).stat().st_size / 1e6:.1f} MB, gguf-lora).")
        return
    else:
        path = export_gguf(_hf_dir(model_spec, "--model"), out, quant)
        kind = f"gguf-{quant}"
    size = Path(path).stat().st_size
    click.echo(f"wrote {path} ({size / 1e6:.1f} MB, {kind}).")
    if quant == "q4_k_m" and (merge or not adapter):
        from plumb.export.quantize import fallback_note

        note = fallback_note(path)
        if note:
            click.echo(note)
    _record(ctx, kind, path)


def _record(ctx: click.Context, kind: str, path: Path) -> None:
    from plumb.core.workspace import find_workspace

    try:
        ws = find_workspace((ctx.find_root().obj or {}).get("workspace"))
    except PlumbError:
        return  # outside a workspace: nothing to record
    with ws.store() as store:
        store.add_artifact(kind, str(Path(path).resolve()))


def register(cli: click.Group) -> None:
    cli.add_command(export)
