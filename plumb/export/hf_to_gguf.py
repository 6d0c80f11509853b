"""A Llama-family Hugging Face checkpoint -> GGUF, as llama.cpp's converter does it.

What goes into the file, in the order llama.cpp reads it back:

1. hyperparameters under ``llama.*`` (context length, widths, heads, rope base,
   RMS-norm epsilon);
2. the tokenizer: a byte-level BPE ("gpt2") vocabulary with token types,
   merges, the pre-tokenizer name llama.cpp uses to split text
   (``tokenizer.ggml.pre``), special token ids, whether to prepend BOS, and the
   chat template — so llama.cpp formats chats exactly as transformers does;
3. the weights under GGUF tensor names (``gguf.get_tensor_name_map``), with
   the Q and K projections permuted (see ``permute``) because llama.cpp's rope
   pairs dimensions (i, i+1) while Hugging Face's pairs (i, i + d/2).

Reference: ggml-org/llama.cpp convert_hf_to_gguf.py (``LlamaModel``,
``get_vocab_base``, ``_set_vocab_gpt2``). Only what plumb's models need is
here; anything else is refused with a message saying what is supported.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from plumb.core.errors import PlumbError

# HF architecture -> GGUF architecture name. Mistral-style models without
# sliding-window attention are Llama for llama.cpp, but are not tested here.
SUPPORTED_ARCHITECTURES = {"LlamaForCausalLM": "llama"}


# -- hyperparameters -------------------------------------------------------------


def read_config(model_dir: str | Path) -> dict[str, Any]:
    """config.json of a supported model, or a PlumbError saying why not."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise PlumbError(f"{model_dir} is not a Hugging Face model directory (no config.json).", exit_code=2)
    config = json.loads(path.read_text(encoding="utf-8"))
    arch = (config.get("architectures") or ["?"])[0]
    if arch not in SUPPORTED_ARCHITECTURES:
        raise PlumbError(
            f"cannot export {model_dir} to GGUF: architecture {arch!r} is not supported. "
            f"Supported: {', '.join(SUPPORTED_ARCHITECTURES)}.", exit_code=2)
    scaling = config.get("rope_scaling") or {}
    rope_type = scaling.get("rope_type") or (config.get("rope_parameters") or {}).get("rope_type", "default")
    if rope_type not in (None, "default"):
        raise PlumbError(f"cannot export {model_dir}: rope scaling {rope_type!r} is not supported yet "
                         "(only plain rope, as in SmolLM2 and Llama 2).", exit_code=2)
    return config


def rope_theta(config: dict[str, Any]) -> float:
    # transformers 5 moved rope_theta into rope_parameters
    return float((config.get("rope_parameters") or {}).get("rope_theta") or config.get("rope_theta", 10000.0))


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


def permute_qk(name: str, data, n_head: int, n_head_kv: int):
    """llama.cpp's rotary layout for q_proj / k_proj weights (and a LoRA's B); others unchanged."""
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
    writer = gguf.GGUFWriter(tmp, SUPPORTED_ARCHITECTURES[config["architectures"][0]])
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


def gguf_name(hf_name: str, n_layers: int) -> str:
    """HF tensor name -> GGUF tensor name (``model.layers.0.self_attn.q_proj.weight`` -> ``blk.0.attn_q.weight``)."""
    import gguf

    name = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers).get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise PlumbError(f"cannot export: tensor {hf_name!r} has no GGUF name for llama.", exit_code=2)
    return name


def write_hparams(writer, config: dict[str, Any], name: str) -> None:
    n_head = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // n_head
    writer.add_name(name)
    writer.add_context_length(config.get("max_position_embeddings", 2048))
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(config.get("num_key_value_heads", n_head))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config["hidden_size"] // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_rope_freq_base(rope_theta(config))
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-5))
    writer.add_vocab_size(config["vocab_size"])


# -- tokenizer -------------------------------------------------------------------


def pre_tokenizer_name(tokenizer_json: dict[str, Any]) -> str:
    """The llama.cpp pre-tokenizer that splits text like this tokenizer.json does.

    llama.cpp's converter identifies it by hashing the tokenization of a test
    string; we read the pre-tokenizer's structure instead, for the layouts we
    support: SmolLM2's (single digits, then GPT-2 byte-level) and plain GPT-2.
    """
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True) \
            and not parts[1].get("add_prefix_space"):
        return "smollm"
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True) and not parts[0].get("add_prefix_space"):
        return "gpt-2"
    raise PlumbError(
        f"cannot export the tokenizer: its pre-tokenizer {kinds} is not one plumb maps to llama.cpp. "
        "Supported: SmolLM2-style [Digits(individual), ByteLevel] ('smollm') and GPT-2 [ByteLevel] ('gpt-2').",
        exit_code=2)


def write_tokenizer(writer, model_dir: Path, vocab_size: int) -> None:
    """Vocabulary, merges, special ids, BOS behaviour and chat template (like ``_set_vocab_gpt2``)."""
    import gguf
    from transformers import AutoTokenizer

    tok_path = model_dir / "tokenizer.json"
    if not tok_path.is_file():
        raise PlumbError(f"cannot export {model_dir}: no tokenizer.json (only fast BPE tokenizers are supported).",
                         exit_code=2)
    tok_json = json.loads(tok_path.read_text(encoding="utf-8"))
    if (tok_json.get("model") or {}).get("type") != "BPE":
        raise PlumbError(f"cannot export {model_dir}: tokenizer model {tok_json.get('model', {}).get('type')!r} "
                         "is not supported (byte-level BPE only).", exit_code=2)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    reverse = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(tok_json))
    writer.add_token_list(tokens)
    writer.add_token_types(types)

    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=vocab_size)
    # Whether BOS/EOS are added is what the tokenizer does, not what a config says.
    probe = tokenizer("a")["input_ids"]
    special.add_special_token["bos"] = tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id]
    special.add_special_token["eos"] = tokenizer.eos_token_id is not None and probe[-1:] == [tokenizer.eos_token_id]
    if tokenizer.chat_template:
        special.chat_template = tokenizer.chat_template
    special.add_to_gguf(writer, quiet=True)


# -- weights ---------------------------------------------------------------------


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


def export_f16(model_dir: str | Path, out_path: str | Path, outtype: str = "f16") -> Path:
    """Write ``model_dir`` as a GGUF with 2-D weights in f16 (or f32) and norms in f32."""
    import gguf
    import numpy as np

    model_dir, out = Path(model_dir), Path(out_path)
    config = read_config(model_dir)
    n_layers, n_head = config["num_hidden_layers"], config["num_attention_heads"]
    n_head_kv = config.get("num_key_value_heads", n_head)
    with atomic_writer(out, config) as writer:
        write_hparams(writer, config, name=model_dir.name)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if outtype == "f16" else gguf.LlamaFileType.ALL_F32)
        write_tokenizer(writer, model_dir, config["vocab_size"])
        for name, data in hf_tensors(model_dir):
            if name.endswith("rotary_emb.inv_freq"):
                continue
            if name == "lm_head.weight" and config.get("tie_word_embeddings"):
                continue  # llama.cpp reuses token_embd when output.weight is absent
            data = permute_qk(name, data, n_head, n_head_kv)
            dtype = np.float16 if outtype == "f16" and data.ndim == 2 else np.float32
            writer.add_tensor(gguf_name(name, n_layers), np.ascontiguousarray(data.astype(dtype)))
    return out


def export_gguf(model_dir: str | Path, out_path: str | Path, quant: str = "f16") -> Path:
    """Export a Hugging Face model directory to GGUF, quantized to ``quant``.

    ``quant`` is ``f32``, ``f16``, ``q8_0`` or ``q4_k_m``; quantized files are
    made from an f16 intermediate by llama.cpp's quantizer.
    """
    from plumb.export.quantize import QUANTS, quantize

    out = Path(out_path)
    if quant in ("f16", "f32"):
        return export_f16(model_dir, out, quant)
    if quant not in QUANTS:
        raise PlumbError(f"unknown quantization {quant!r}; choose one of f32, f16, {', '.join(QUANTS)}.", exit_code=2)
    f16 = out.with_name(out.name + ".f16.part")
    try:
        export_f16(model_dir, f16, "f16")
        return quantize(f16, out, quant)
    finally:
        f16.unlink(missing_ok=True)
