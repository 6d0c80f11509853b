"""A Hugging Face checkpoint -> GGUF, as llama.cpp's converter does it.

What goes into the file, in the order llama.cpp reads it back:

1. hyperparameters under ``ARCH.*`` (context length, widths, heads, rope base
   and scaling, RMS-norm epsilon) and the architecture's own (``arch.py``);
2. the tokenizer (``vocab.py``): vocabulary, token types (and scores for
   SentencePiece), merges, the pre-tokenizer name, special token ids, whether
   to prepend BOS, and the chat template — so llama.cpp formats chats exactly
   as transformers does;
3. the weights under GGUF tensor names (``gguf.get_tensor_name_map`` for the
   architecture), with Q and K permuted where llama.cpp's rope needs it (see
   ``permute``), Gemma's norms stored as 1 + w, and the tensors llama.cpp
   computes from the config (Llama 3's ``rope_freqs``).

Every file records ``plumb.source``, the identity of the weights it was made
from (``identity.py``), so a LoRA trained on those weights is recognised as
belonging to it. Architectures are in ``arch.ARCHS``; anything else is refused
with a message listing what is supported.
"""

from __future__ import annotations

import functools
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from plumb.core.errors import PlumbError
from plumb.export.arch import SUPPORTED_ARCHITECTURES, Arch, arch_for, write_hparams
from plumb.export.vocab import pre_tokenizer_name, write_tokenizer

__all__ = ["SUPPORTED_ARCHITECTURES", "export_gguf", "export_direct", "read_config", "permute", "permute_qk",
           "atomic_writer", "gguf_name", "pre_tokenizer_name", "write_tokenizer"]


def read_config(model_dir: str | Path) -> dict[str, Any]:
    """config.json of a supported model, or a PlumbError saying why not."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise PlumbError(f"{model_dir} is not a Hugging Face model directory (no config.json).", exit_code=2)
    config = json.loads(path.read_text(encoding="utf-8"))
    arch_for(config, str(model_dir))
    return config


def permute(w, n_head: int, n_head_kv: int | None = None):
    """Reorder Q/K rows from HF's rotate-half rope layout to llama.cpp's interleaved one.

    Same as ``LlamaModel.permute`` in convert_hf_to_gguf.py; works on numpy
    arrays and torch tensors alike. For K pass ``n_head_kv``.
    """
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


def permute_qk(name: str, data, n_head: int, n_head_kv: int, arch: Arch | None = None):
    """llama.cpp's rotary layout for q_proj / k_proj weights (and a LoRA's B) of an architecture that
    needs it (Llama, Mistral; not Qwen or Gemma); other tensors unchanged."""
    if arch is not None and not arch.permute_qk:
        return data
    if name.endswith("q_proj.weight"):
        return permute(data, n_head, n_head)
    if name.endswith("k_proj.weight"):
        return permute(data, n_head, n_head_kv)
    return data


@contextmanager
def atomic_writer(out: Path, config: dict[str, Any]):
    """A GGUFWriter on ``out.part``: written out and renamed to ``out`` only if the block succeeds."""
    import gguf

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    writer = gguf.GGUFWriter(tmp, arch_for(config, str(out)).name)
    try:
        yield writer
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    writer.close()
    os.replace(tmp, out)


@functools.lru_cache(maxsize=None)
def _name_map(arch_name: str, n_layers: int) -> Any:
    """gguf's tensor-name map, built once per (architecture, layers): building it takes ~40 ms, which per
    tensor made a LoRA export of the starter's 210 pairs take 7 s (0.1 s with the map cached)."""
    import gguf

    model_arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch_name)
    return gguf.get_tensor_name_map(model_arch, n_layers)


def gguf_name(hf_name: str, n_layers: int, arch: Arch | None = None) -> str:
    """HF tensor name -> GGUF tensor name (``model.layers.0.self_attn.q_proj.weight`` -> ``blk.0.attn_q.weight``)."""
    name = arch.name if arch else "llama"
    mapped = _name_map(name, n_layers).get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if mapped is None:
        raise PlumbError(f"cannot export: tensor {hf_name!r} has no GGUF name for {name}.", exit_code=2)
    return mapped


def hf_tensors(model_dir: Path) -> Iterator[tuple[str, Any]]:
    """(name, float32 numpy array) for every tensor in the checkpoint's safetensors files."""
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise PlumbError(f"cannot export {model_dir}: no *.safetensors weights (save the model with "
                         "save_pretrained(..., safe_serialization=True)).", exit_code=2)
    for f in files:
        with safe_open(f, framework="pt") as st:
            for name in st.keys():
                yield name, st.get_tensor(name).float().numpy()


def skip_tensor(name: str, config: dict[str, Any]) -> bool:
    """Tensors that do not go into the GGUF: rope caches, and lm_head when tied to the embeddings
    (llama.cpp reuses token_embd when output.weight is absent)."""
    return name.endswith("rotary_emb.inv_freq") or (name == "lm_head.weight" and bool(config.get("tie_word_embeddings")))


# outtype -> (file type, GGML type of the 2-D weights). Written straight from the float32 weights, as
# llama.cpp's converter does with --outtype; other quantizations go through llama.cpp's quantizer.
DIRECT = {"f32": ("ALL_F32", "F32"), "f16": ("MOSTLY_F16", "F16"), "q8_0": ("MOSTLY_Q8_0", "Q8_0")}


def tensor_type(name: str, data, outtype: str):
    """The GGML type a tensor is stored in, by convert_hf_to_gguf.py's rule: 1-D tensors (norms, biases)
    and anything that is not a ``.weight`` stay F32; 2-D weights take ``outtype``."""
    import gguf

    if data.ndim <= 1 or not name.endswith(".weight"):
        return gguf.GGMLQuantizationType.F32
    return gguf.GGMLQuantizationType[DIRECT[outtype][1]]


def encode(data, qtype):
    """``data`` (float32) as ``qtype`` with gguf's own encoder (the converter's), and the type it got:
    a row that is not a multiple of Q8_0's 32-wide block falls back to F16, as in the converter."""
    import gguf

    try:
        return gguf.quants.quantize(data, qtype), qtype
    except gguf.QuantError:
        return gguf.quants.quantize(data, gguf.GGMLQuantizationType.F16), gguf.GGMLQuantizationType.F16


def export_direct(model_dir: str | Path, out_path: str | Path, outtype: str = "f16") -> Path:
    """Write ``model_dir`` as a GGUF with its 2-D weights in ``outtype`` (f32, f16 or q8_0) and its norms
    in f32, each weight encoded once from float32.

    Q8_0 is made here rather than by llama.cpp's quantizer from an f16 file: that path rounds every
    weight to f16 first and then to 8 bits, and on a tiny Llama it agreed less with transformers
    than llama.cpp's own converter does (tests/test_export_gguf.py measures it).
    """
    import gguf
    import numpy as np

    from plumb.export.identity import SOURCE_KEY, hf_identity

    if outtype not in DIRECT:
        raise PlumbError(f"cannot write {outtype!r} directly; choose one of {', '.join(DIRECT)}.", exit_code=2)
    model_dir, out = Path(model_dir), Path(out_path)
    config = read_config(model_dir)
    arch = arch_for(config, str(model_dir))
    n_layers, n_head = config["num_hidden_layers"], config["num_attention_heads"]
    n_head_kv = config.get("num_key_value_heads") or n_head
    with atomic_writer(out, config) as writer:
        write_hparams(writer, config, arch, name=model_dir.name)
        writer.add_file_type(gguf.LlamaFileType[DIRECT[outtype][0]])
        writer.add_string(SOURCE_KEY, hf_identity(model_dir))
        write_tokenizer(writer, model_dir, config["vocab_size"])
        for name, data in hf_tensors(model_dir):
            if skip_tensor(name, config):
                continue
            data = permute_qk(name, data, n_head, n_head_kv, arch)
            if arch.norm_shift and name.endswith("norm.weight"):
                data = data + arch.norm_shift
            data, qtype = encode(np.ascontiguousarray(data, dtype=np.float32), tensor_type(name, data, outtype))
            writer.add_tensor(gguf_name(name, n_layers, arch), data, raw_dtype=qtype)
        for name, data in (arch.extra_tensors(config) if arch.extra_tensors else []):
            writer.add_tensor(name, data)
    return out


def export_gguf(model_dir: str | Path, out_path: str | Path, quant: str = "f16") -> Path:
    """Export a Hugging Face model directory to GGUF, quantized to ``quant``.

    ``quant`` is ``f32``, ``f16``, ``q8_0`` (written directly, see ``export_direct``) or ``q4_k_m``
    (made from an f16 intermediate by llama.cpp's quantizer, which picks k-quant types per tensor).
    """
    from plumb.export.quantize import QUANTS, quantize

    out = Path(out_path)
    if quant in DIRECT:
        return export_direct(model_dir, out, quant)
    if quant not in QUANTS:
        raise PlumbError(f"unknown quantization {quant!r}; choose one of f32, f16, {', '.join(QUANTS)}.", exit_code=2)
    f16 = out.with_name(out.name + ".f16.part")
    try:
        export_direct(model_dir, f16, "f16")
        return quantize(f16, out, quant)
    finally:
        f16.unlink(missing_ok=True)
