"""The export stage: a trained peft adapter becomes a GGUF LoRA for llama.cpp.

The GGUF LoRA is written next to the adapter (``OUT/adapter.gguf``) and
recorded as a ``gguf-lora`` artifact of the run with its sha256; a rerun finds
that file unchanged and skips the work.
"""

from __future__ import annotations

from pathlib import Path

from plumb.core.cache import sha256_of as sha256
from plumb.core.records import Event, EventSink
from plumb.pipeline.session import Session


def export_adapter(session: Session, adapter_dir: str, base_hf: str, run_id: int | None = None,
                   out_path: str | None = None, sink: EventSink | None = None) -> Path:
    """``adapter_dir`` (peft) -> a GGUF LoRA on the base model ``base_hf`` (an HF directory)."""
    emit = sink or (lambda event: None)
    out = Path(out_path) if out_path else Path(adapter_dir).parent / "adapter.gguf"
    emit(Event("stage", stage="export", message=f"adapter -> GGUF LoRA {out}"))
    done = session.store.one("SELECT sha256 FROM artifacts WHERE kind = 'gguf-lora' AND path = ? "
                             "ORDER BY id DESC LIMIT 1", (str(out),))
    if done is not None and out.is_file() and done["sha256"] == sha256(out):
        emit(Event("log", run_id, message=f"{out} is already exported"))
        return out
    from plumb.export.lora_to_gguf import export_lora

    export_lora(adapter_dir, out, base_dir=base_hf)
    session.store.add_artifact("gguf-lora", str(out), run_id, sha256(out), {"adapter": adapter_dir, "base": base_hf})
    return out


def scaled_adapter(adapter_dir: str, scale: float) -> str:
    """A copy of the peft adapter whose update is ``scale`` times the original (every ``lora_B`` weight
    scaled), next to it as ``ADAPTER-x<scale>``: the weights between the base (0) and the adapter (1),
    as llama.cpp's per-call LoRA scale serves them. Written once; returns its directory."""
    src = Path(adapter_dir)
    dst = src.with_name(f"{src.name}-x{scale:g}")
    if (dst / "adapter_model.safetensors").is_file():
        return str(dst)
    from safetensors.torch import load_file, save_file

    tmp = dst.with_name(dst.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    weights = load_file(str(src / "adapter_model.safetensors"))
    weights = {k: v * scale if ".lora_B." in k else v for k, v in weights.items()}
    save_file(weights, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
    (tmp / "adapter_config.json").write_bytes((src / "adapter_config.json").read_bytes())
    tmp.replace(dst)
    return str(dst)
