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
