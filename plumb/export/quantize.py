"""Quantize a GGUF with llama.cpp's own quantizer (``llama_model_quantize``).

Q8_0 works on any width that is a multiple of 32. The k-quants (Q4_K_M) work
in blocks of 256: for a tensor whose rows are not a multiple of 256 llama.cpp
itself falls back to a legacy type for that tensor (it logs "using fallback
quantization"), so a tiny test model still quantizes, only less.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import tempfile
from pathlib import Path

from plumb.core.errors import PlumbError

# name -> llama_ftype enum member name in llama_cpp
QUANTS = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@contextlib.contextmanager
def captured_stderr():
    """Send file descriptor 2 (where llama.cpp logs) to a temp file for the block; yield its path."""
    if os.environ.get("PLUMB_DEBUG"):
        yield Path(os.devnull)
        return
    with tempfile.NamedTemporaryFile(prefix="plumb-quantize-", suffix=".log", delete=False) as f:
        path = Path(f.name)
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "wb") as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield path
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)
        path.unlink(missing_ok=True)


def quantize(src: str | Path, dst: str | Path, quant: str, threads: int | None = None) -> Path:
    """Quantize the GGUF ``src`` to ``dst`` (written to a temp file, then renamed)."""
    import llama_cpp

    if quant not in QUANTS:
        raise PlumbError(f"unknown quantization {quant!r}; choose one of {', '.join(QUANTS)}.", exit_code=2)
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise PlumbError(f"cannot quantize {src}: no such file.", exit_code=2)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTS[quant])
    params.nthread = threads or cpu_count()
    tmp = dst.with_name(dst.name + ".part")
    with captured_stderr() as log:  # llama.cpp prints per-tensor progress; show it only on failure
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
        failed = rc != 0 or not tmp.is_file()
        tail = " ".join(log.read_text(errors="replace").splitlines()[-5:]).strip() if failed else ""
    if failed:
        tmp.unlink(missing_ok=True)
        raise PlumbError(f"llama.cpp could not quantize {src} to {quant} (return code {rc}): {tail}")
    os.replace(tmp, dst)
    return dst


def tensor_types(path: str | Path) -> dict[str, int]:
    """How many tensors of each GGML type a GGUF holds, e.g. {"Q4_K": 120, "F32": 61}."""
    import gguf

    counts: dict[str, int] = {}
    for t in gguf.GGUFReader(path).tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return counts


def fallback_note(path: str | Path) -> str:
    """A sentence saying which legacy types llama.cpp used where k-quant blocks (256) did not fit."""
    counts = tensor_types(path)
    legacy = {k: v for k, v in counts.items() if k in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")}
    if not legacy:
        return ""
    kinds = ", ".join(f"{v} x {k}" for k, v in sorted(legacy.items()))
    return (f"note: some rows are not a multiple of 256, so llama.cpp used fallback types for them ({kinds}); "
            "the file is valid, only less compressed than a true Q4_K_M.")
