"""Which weights a model or a LoRA belongs to, and refusing a LoRA on a base it was not trained on.

An identity is a short string:

* ``gguf-sha256:HEX`` — the sha256 of a GGUF file a person has; an HF copy
  plumb made from that GGUF (the starter's, ``plumb models add``) records it
  in its ``.complete`` marker, so it carries the same identity;
* ``hf-sample:HEX`` — any other Hugging Face directory: a sha256 over its
  safetensors files' names, sizes and 64 evenly spaced 64 KiB samples (all of
  a small file), cheap on a multi-GB model and different for any fine-tune.

A GGUF that plumb writes from a directory records the directory's identity as
``plumb.source``; a GGUF LoRA records its base's identity as
``plumb.lora.base``. ``check_lora_base`` compares them (the base GGUF's
``plumb.source`` or its file hash: either names its weights) and the
adapter's tensor shapes against the base's, and raises a PlumbError that says
which test failed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from plumb.core.errors import PlumbError

SOURCE_KEY = "plumb.source"
BASE_KEY = "plumb.lora.base"
MARKERS = (".complete", "plumb-source.json")  # the starter's, localmodels'
SAMPLES, SAMPLE_BYTES = 64, 1 << 16


def hf_identity(model_dir: str | Path) -> str:
    d = Path(model_dir)
    for marker in MARKERS:
        try:
            sha = json.loads((d / marker).read_text(encoding="utf-8")).get("from_sha256")
        except (OSError, ValueError, AttributeError):
            continue
        if sha:
            return f"gguf-sha256:{sha}"
    h = hashlib.sha256()
    for f in sorted(d.glob("*.safetensors")):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}\n".encode())
        with open(f, "rb") as fh:
            if size <= SAMPLES * SAMPLE_BYTES:
                h.update(fh.read())
                continue
            for i in range(SAMPLES):
                fh.seek(i * (size - SAMPLE_BYTES) // (SAMPLES - 1))
                h.update(fh.read(SAMPLE_BYTES))
    return f"hf-sample:{h.hexdigest()}"


def _string(reader, key: str) -> str | None:
    field = reader.fields.get(key)
    return str(field.contents()) if field is not None else None


def gguf_identities(path: str | Path, reader=None, want: str | None = None) -> list[str]:
    """The identities of the weights in a model GGUF: its ``plumb.source`` (the weights plumb made it
    from) and its file's sha256 (what an HF copy of this very file records). The file is hashed only
    when ``want`` is not the source already (hashes are cached by size and mtime)."""
    import gguf

    from plumb.core.cache import file_sha256

    reader = reader or gguf.GGUFReader(path)
    source = _string(reader, SOURCE_KEY)
    if source and source == want:
        return [source]
    return [i for i in (source, f"gguf-sha256:{file_sha256(Path(path))}") if i]


def check_lora_base(base_gguf: str | Path, lora_gguf: str | Path) -> None:
    """Raise PlumbError unless the GGUF LoRA ``lora_gguf`` fits the model GGUF ``base_gguf``:
    same architecture, every adapted tensor present with matching shapes, and (when the adapter
    recorded one) the same base identity."""
    from plumb.export.gguf_to_hf import open_gguf

    base, lora = open_gguf(base_gguf), open_gguf(lora_gguf)
    b_arch, l_arch = _string(base, "general.architecture"), _string(lora, "general.architecture")
    if _string(lora, "general.type") != "adapter":
        raise PlumbError(f"{lora_gguf} is not a GGUF LoRA adapter (general.type is not 'adapter').", exit_code=2)
    if b_arch != l_arch:
        raise PlumbError(f"the LoRA {lora_gguf} is for a {l_arch} model, but {base_gguf} is {b_arch}: it was "
                         "trained on a different base.", exit_code=2)
    shapes = {t.name: tuple(int(x) for x in t.shape) for t in base.tensors}  # GGUF order: (in, out)
    for t in lora.tensors:
        if not t.name.endswith(".lora_a"):
            continue
        target = t.name[: -len(".lora_a")]
        if target not in shapes:
            raise PlumbError(f"the LoRA {lora_gguf} adapts {target}, which {base_gguf} does not have: it was "
                             "trained on a different base.", exit_code=2)
        n_in, n_out = shapes[target][0], shapes[target][1]
        b = next(x for x in lora.tensors if x.name == target + ".lora_b")
        if int(t.shape[0]) != n_in or int(b.shape[1]) != n_out:
            raise PlumbError(f"the LoRA {lora_gguf} has {target} of shape {n_out}x{int(t.shape[0])}, but "
                             f"{base_gguf}'s is {n_out}x{n_in}: it was trained on a different base.", exit_code=2)
    recorded = _string(lora, BASE_KEY)
    if recorded is not None:
        actual = gguf_identities(base_gguf, base, recorded)
        if recorded not in actual:
            raise PlumbError(
                f"the LoRA {lora_gguf} was trained on {recorded}, but {base_gguf} is {' / '.join(actual)}: a different "
                "base (same shapes, other weights). Apply it to the GGUF it was trained for, or train on "
                "this one (`plumb models add NAME BASE.gguf`).", exit_code=2)
