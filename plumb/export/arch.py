"""One small description per architecture plumb converts between Hugging Face and GGUF.

Each ``Arch`` says, for one llama.cpp architecture, what differs from the
common case; everything else (hyperparameters, tensor names from the gguf
library's ``TensorNameMap``, the tokenizer) is shared code:

* ``permute_qk`` — llama.cpp's "llama" graph applies rope to adjacent pairs
  (i, i+1) while Hugging Face's rotates halves (i, i + d/2), so Q and K rows
  are permuted on export (``LlamaModel.permute`` in convert_hf_to_gguf.py);
  Qwen2/Qwen3/Gemma use llama.cpp's NEOX rope, which is HF's layout: no permute.
* ``norm_shift`` — Gemma's RMSNorm multiplies by (1 + w); llama.cpp stores 1 + w.
* ``rope_types`` — the rope scalings plumb writes for it (others are refused).
* ``hparams`` / ``extra_tensors`` / ``check`` — per-architecture metadata
  (Gemma's soft-capping and sliding window), tensors the converter adds
  (Llama 3's ``rope_freqs``), and variants refused with a reason.
* ``from_gguf`` — config fields transformers' GGUF loader does not read back
  (Llama 3 rope scaling, Qwen3's head_dim, Gemma's query scale...), so the HF
  copy of a person's GGUF computes what llama.cpp computes on it.

Reference: ggml-org/llama.cpp convert_hf_to_gguf.py (``LlamaModel``,
``Qwen2Model``, ``Qwen3Model``, ``Gemma2Model``, ``Gemma3Model``,
``TextModel.set_gguf_parameters``) and gguf-py's tensor_mapping.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from plumb.core.errors import PlumbError

Config = dict[str, Any]


def head_dim(config: Config) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def rope(config: Config) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(global, sliding-window) rope parameters, from transformers 5's ``rope_parameters``
    (flat, or per layer type) or the older ``rope_theta`` / ``rope_scaling`` / ``rope_local_base_freq``."""
    params = config.get("rope_parameters") or {}
    if "full_attention" in params or "sliding_attention" in params:
        return dict(params.get("full_attention") or {"rope_type": "default"}), params.get("sliding_attention")
    glob = dict(params or config.get("rope_scaling") or {})
    glob["rope_type"] = glob.get("rope_type") or glob.get("type") or "default"
    glob.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    local = config.get("rope_local_base_freq")
    return glob, ({"rope_type": "default", "rope_theta": local} if local is not None else None)


def llama3_factors(theta: float, dim: int, params: dict[str, Any]) -> list[float]:
    """Llama 3's per-frequency rope divisors, as convert_hf_to_gguf.py writes them to ``rope_freqs``."""
    factor = params.get("factor", 8.0)
    low, high = params.get("low_freq_factor", 1.0), params.get("high_freq_factor", 4.0)
    old_ctx = params.get("original_max_position_embeddings", 8192)
    out = []
    for i in range(0, dim, 2):
        wavelen = 2 * math.pi * theta ** (i / dim)
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(float(factor))
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return out


# -- per-architecture pieces -----------------------------------------------------------------

def _llama_extra(config: Config) -> list[tuple[str, Any]]:
    import numpy as np

    glob, _ = rope(config)
    if glob["rope_type"] != "llama3":
        return []
    return [("rope_freqs.weight", np.array(llama3_factors(glob["rope_theta"], head_dim(config), glob), np.float32))]


def _no_sliding(config: Config, where: str) -> None:
    if config.get("use_sliding_window"):
        raise PlumbError(f"cannot export {where}: sliding-window attention (use_sliding_window) is not "
                         "supported by llama.cpp for this architecture.", exit_code=2)


def _gemma_scale(config: Config, where: str, big_layers: int) -> None:
    """llama.cpp scales Gemma's queries by 1/sqrt(head_dim) (1/sqrt(hidden/heads) for the 27B):
    a model whose query_pre_attn_scalar is something else would compute differently there."""
    q = config.get("query_pre_attn_scalar", 256)
    allowed = {head_dim(config)}
    if config["num_hidden_layers"] == big_layers:
        allowed.add(config["hidden_size"] // config["num_attention_heads"])
    if q not in allowed:
        raise PlumbError(f"cannot export {where}: query_pre_attn_scalar {q} is neither head_dim "
                         f"({head_dim(config)}) nor the 27B's hidden/heads; llama.cpp would scale "
                         "attention differently.", exit_code=2)


def _gemma2_check(config: Config, where: str) -> None:
    _gemma_scale(config, where, 46)


def _gemma3_check(config: Config, where: str) -> None:
    _gemma_scale(config, where, 62)
    if config.get("attn_logit_softcapping"):
        raise PlumbError(f"cannot export {where}: Gemma 3 with attention soft-capping is not what llama.cpp's "
                         "gemma3 graph computes.", exit_code=2)
    types = config.get("layer_types")
    n = config["num_hidden_layers"]
    if types and types != ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n)]:
        raise PlumbError(f"cannot export {where}: llama.cpp's gemma3 puts a global layer every 6th layer; "
                         "this model's layer_types differ.", exit_code=2)


def _gemma2_hparams(writer, config: Config) -> None:
    writer.add_attn_logit_softcapping(config.get("attn_logit_softcapping") or 0.0)
    writer.add_final_logit_softcapping(config.get("final_logit_softcapping") or 0.0)
    writer.add_sliding_window(config.get("sliding_window") or 4096)


def _gemma3_hparams(writer, config: Config) -> None:
    if config.get("final_logit_softcapping"):
        writer.add_final_logit_softcapping(config["final_logit_softcapping"])
    writer.add_sliding_window(config.get("sliding_window") or 4096)


# -- what transformers' GGUF loader leaves out, read back from the GGUF ----------------------

def _field(fields: dict[str, Any], key: str, default: Any = None) -> Any:
    f = fields.get(key)
    return f.contents() if f is not None else default


def _llama_from_gguf(fields: dict[str, Any], tensors: dict[str, Any], config: Config) -> Config:
    """Llama 3.x GGUFs carry rope scaling only as the ``rope_freqs`` tensor: find the llama3
    parameters that reproduce it (transformers would otherwise use plain rope)."""
    import numpy as np

    freqs = tensors.get("rope_freqs.weight")
    if freqs is None:
        return {}
    got = np.asarray(freqs, np.float32).reshape(-1)
    theta, dim = float(rope(config)[0]["rope_theta"]), head_dim(config)
    for old_ctx in [2 ** k for k in range(5, 18)]:
        for low, high in ((1.0, 4.0), (1.0, 2.0), (2.0, 4.0), (1.0, 8.0)):
            params = {"rope_type": "llama3", "factor": float(got.max()), "low_freq_factor": low,
                      "high_freq_factor": high, "original_max_position_embeddings": old_ctx}
            if np.allclose(llama3_factors(theta, dim, params), got, rtol=1e-4):
                return {"rope_parameters": {**params, "rope_theta": theta}}
    raise PlumbError("this GGUF's rope_freqs tensor is not Llama 3 rope scaling with parameters plumb "
                     "can recover; transformers would train it with different positions than llama.cpp "
                     "serves it. Use the model's Hugging Face directory instead (hf:DIR).", exit_code=2)


def _qwen_from_gguf(fields: dict[str, Any], tensors: dict[str, Any], config: Config) -> Config:
    # Qwen3Config's default head_dim is 128, not hidden/heads: say it whenever the GGUF does not
    arch = _field(fields, "general.architecture")
    key_length = _field(fields, f"{arch}.attention.key_length") or _field(fields, f"{arch}.rope.dimension_count")
    return {"head_dim": int(key_length or config["hidden_size"] // config["num_attention_heads"])}


def _gemma_from_gguf(fields: dict[str, Any], tensors: dict[str, Any], config: Config) -> Config:
    arch = _field(fields, "general.architecture")
    out: Config = {}
    dim = _field(fields, f"{arch}.attention.key_length") or head_dim(config)
    heads, layers = config["num_attention_heads"], config["num_hidden_layers"]
    big = layers == (46 if arch == "gemma2" else 62)
    out["head_dim"] = int(dim)
    out["query_pre_attn_scalar"] = config["hidden_size"] // heads if big else int(dim)
    window = _field(fields, f"{arch}.attention.sliding_window")
    if window:
        out["sliding_window"] = int(window)
    final = _field(fields, f"{arch}.final_logit_softcapping")
    out["final_logit_softcapping"] = float(final) if final else None
    if arch == "gemma2":
        attn = _field(fields, f"{arch}.attention.attn_logit_softcapping") or _field(fields, f"{arch}.attn_logit_softcapping")
        out["attn_logit_softcapping"] = float(attn) if attn else None
    else:
        glob: dict[str, Any] = {"rope_type": "default", "rope_theta": float(_field(fields, f"{arch}.rope.freq_base", 1e6))}
        if _field(fields, f"{arch}.rope.scaling.type") == "linear":
            glob = {**glob, "rope_type": "linear", "factor": float(_field(fields, f"{arch}.rope.scaling.factor"))}
        local = float(_field(fields, f"{arch}.rope.freq_base_swa", 10000.0))
        out["rope_parameters"] = {"full_attention": glob,
                                  "sliding_attention": {"rope_type": "default", "rope_theta": local}}
    return out


def _mistral_from_gguf(fields: dict[str, Any], tensors: dict[str, Any], config: Config) -> Config:
    # llama.cpp's llama graph has no sliding window: the copy must not have one either
    return {"sliding_window": None} if config.get("model_type") == "mistral" else {}


@dataclass(frozen=True)
class Arch:
    name: str                      # llama.cpp's architecture (general.architecture)
    hf: tuple[str, ...]            # Hugging Face architectures exported as it
    title: str                     # for messages and the README
    permute_qk: bool = False
    norm_shift: float = 0.0
    rope_types: tuple[str, ...] = ("default",)
    key_length: bool = False       # always write attention.key_length/value_length
    hparams: Callable[[Any, Config], None] | None = None
    extra_tensors: Callable[[Config], list[tuple[str, Any]]] | None = None
    check: Callable[[Config, str], None] | None = None
    from_gguf: Callable[[dict, dict, Config], Config] | None = None
    tokenizers: tuple[str, ...] = field(default=())  # the kinds tested (for messages)


ARCHS: tuple[Arch, ...] = (
    Arch("llama", ("LlamaForCausalLM",), "Llama 2/3.x, SmolLM", permute_qk=True,
         rope_types=("default", "llama3", "linear"), extra_tensors=_llama_extra, from_gguf=_llama_from_gguf,
         tokenizers=("BPE smollm", "BPE llama-bpe")),
    Arch("llama", ("MistralForCausalLM",), "Mistral", permute_qk=True, from_gguf=_mistral_from_gguf,
         tokenizers=("SentencePiece",)),
    Arch("qwen2", ("Qwen2ForCausalLM",), "Qwen2/Qwen2.5", check=_no_sliding, from_gguf=_qwen_from_gguf,
         tokenizers=("BPE qwen2",)),
    Arch("qwen3", ("Qwen3ForCausalLM",), "Qwen3", key_length=True, check=_no_sliding, from_gguf=_qwen_from_gguf,
         tokenizers=("BPE qwen2",)),
    Arch("gemma2", ("Gemma2ForCausalLM",), "Gemma 2", norm_shift=1.0, key_length=True,
         hparams=_gemma2_hparams, check=_gemma2_check, from_gguf=_gemma_from_gguf, tokenizers=("SentencePiece",)),
    Arch("gemma3", ("Gemma3ForCausalLM",), "Gemma 3 (text)", norm_shift=1.0, key_length=True,
         rope_types=("default", "linear"), hparams=_gemma3_hparams, check=_gemma3_check,
         from_gguf=_gemma_from_gguf, tokenizers=("SentencePiece",)),
)
BY_HF = {hf: a for a in ARCHS for hf in a.hf}
BY_GGUF = {a.name: a for a in reversed(ARCHS)}  # "llama" -> the Llama entry (Mistral GGUFs are llama)
SUPPORTED_ARCHITECTURES = {hf: a.name for hf, a in BY_HF.items()}


def supported_list() -> str:
    """``LlamaForCausalLM, MistralForCausalLM, ... (Llama 2/3.x, SmolLM; Mistral; ...)``."""
    return f"{', '.join(BY_HF)} ({'; '.join(a.title for a in ARCHS)})"


def arch_for(config: Config, where: str) -> Arch:
    """The description for a config.json, after its variant checks; PlumbError listing what is supported."""
    name = (config.get("architectures") or ["?"])[0]
    arch = BY_HF.get(name)
    if arch is None:
        hint = ""
        if name == "Gemma3ForConditionalGeneration":
            hint = (" (the multimodal Gemma 3 checkpoint: use its GGUF with `plumb models add`, which "
                    "trains on the text model, or a Gemma3ForCausalLM directory)")
        raise PlumbError(f"cannot export {where} to GGUF: architecture {name!r} is not supported{hint}. "
                         f"Supported: {supported_list()}.", exit_code=2)
    glob, local = rope(config)
    for params in (glob, local or {}):
        kind = params.get("rope_type", "default")
        if kind not in arch.rope_types:
            raise PlumbError(f"cannot export {where}: rope scaling {kind!r} is not supported for {arch.title} "
                             f"(supported: {', '.join(arch.rope_types)}).", exit_code=2)
    if arch.check:
        arch.check(config, where)
    return arch


def write_hparams(writer, config: Config, arch: Arch, name: str) -> None:
    """The hyperparameters every architecture shares, then the architecture's own."""
    import gguf

    n_head = config["num_attention_heads"]
    dim = head_dim(config)
    writer.add_name(name)
    writer.add_context_length(config.get("max_position_embeddings", 2048))
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(config.get("num_key_value_heads") or n_head)
    writer.add_rope_dimension_count(dim)
    if arch.key_length or dim != config["hidden_size"] // n_head:
        writer.add_key_length(dim)
        writer.add_value_length(dim)
    glob, local = rope(config)
    writer.add_rope_freq_base(float(glob.get("rope_theta", 10000.0)))
    if local is not None:
        writer.add_rope_freq_base_swa(float(local["rope_theta"]))
    if glob["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(glob["factor"]))
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    writer.add_vocab_size(config["vocab_size"])
    if arch.hparams:
        arch.hparams(writer, config)
