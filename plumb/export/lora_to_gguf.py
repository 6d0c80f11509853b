"""A peft LoRA adapter -> a GGUF LoRA adapter that llama.cpp applies on a base GGUF.

llama.cpp computes ``W x + scale * (alpha / r) * B (A x)`` per adapted matrix,
with ``r`` read from each tensor's shape and ``alpha`` from
``adapter.lora.alpha`` — the same as peft's ``lora_alpha / r`` scaling. The
file holds, per adapted weight ``blk.N.attn_q.weight``, two tensors
``blk.N.attn_q.weight.lora_a`` (r x in) and ``.lora_b`` (out x r), stored
as peft stores them. Where the base Q/K weights are row-permuted on export
(Llama, Mistral: see ``hf_to_gguf.permute``), ``lora_b`` of Q and K gets the
same row permutation, so ``B A`` stays aligned with the permuted base. The
tensor names and the permutation come from the architecture's entry in
``arch.ARCHS``, the same as for the base model.

The adapter records the identity of the weights it was trained on
(``plumb.lora.base``, see ``identity.py``): for an HF copy of a person's GGUF
that is the GGUF's sha256, so ``identity.check_lora_base`` can refuse the
adapter on any other base.

Reference: ggml-org/llama.cpp convert_lora_to_gguf.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from plumb.core.errors import PlumbError
from plumb.export.arch import arch_for
from plumb.export.hf_to_gguf import atomic_writer, gguf_name, permute_qk, read_config


def adapter_config(adapter_dir: Path) -> dict:
    path = adapter_dir / "adapter_config.json"
    if not path.is_file():
        raise PlumbError(f"{adapter_dir} is not a peft adapter directory (no adapter_config.json).", exit_code=2)
    cfg = json.loads(path.read_text(encoding="utf-8"))
    if cfg.get("peft_type", "LORA") != "LORA":
        raise PlumbError(f"{adapter_dir}: peft type {cfg.get('peft_type')!r} cannot be exported; only LoRA.", exit_code=2)
    if cfg.get("use_dora"):
        raise PlumbError(f"{adapter_dir}: DoRA adapters cannot be exported to GGUF; train a plain LoRA.", exit_code=2)
    if cfg.get("alpha_pattern"):
        raise PlumbError(f"{adapter_dir}: per-module lora_alpha (alpha_pattern) cannot be expressed in one GGUF "
                         "adapter.lora.alpha; merge the adapter and export the model instead.", exit_code=2)
    return cfg


def resolve_base(cfg: dict, adapter_dir: Path, base_dir: str | Path | None) -> Path:
    base = base_dir or cfg.get("base_model_name_or_path")
    if not base or not (Path(base) / "config.json").is_file():
        raise PlumbError(
            f"cannot export {adapter_dir}: the base model's config is needed (head counts for the Q/K layout) "
            f"and {base!r} is not a local model directory. Pass the base with --base hf:DIR.", exit_code=2)
    return Path(base)


def lora_pairs(adapter_dir: Path) -> dict[str, dict[str, "object"]]:
    """``{hf_weight_name: {"A": array, "B": array}}`` from adapter_model.safetensors."""
    from safetensors import safe_open

    path = adapter_dir / "adapter_model.safetensors"
    if not path.is_file():
        raise PlumbError(f"{adapter_dir}: no adapter_model.safetensors (save with peft's save_pretrained).",
                         exit_code=2)
    pairs: dict[str, dict[str, object]] = {}
    with safe_open(path, framework="pt") as st:
        for key in st.keys():
            base = key.replace("base_model.model.", "", 1)
            for part, tag in ((".lora_A.weight", "A"), (".lora_B.weight", "B")):
                if base.endswith(part):
                    name = base[: -len(part)] + ".weight"
                    pairs.setdefault(name, {})[tag] = st.get_tensor(key).float().numpy()
                    break
            else:
                raise PlumbError(
                    f"{adapter_dir}: tensor {key!r} is not a LoRA A/B matrix (trained embeddings or "
                    "modules_to_save cannot go into a GGUF adapter); merge and export the model instead.",
                    exit_code=2)
    for name, pair in pairs.items():
        if set(pair) != {"A", "B"}:
            raise PlumbError(f"{adapter_dir}: {name} has lora_{'A' if 'A' in pair else 'B'} only.", exit_code=2)
    return pairs


def export_lora(adapter_dir: str | Path, out_path: str | Path, base_dir: str | Path | None = None) -> Path:
    """Convert a peft LoRA adapter directory to a GGUF LoRA adapter at ``out_path``.

    ``base_dir`` is the Hugging Face base model directory (only its
    config.json is read); by default the adapter's ``base_model_name_or_path``.
    """
    import gguf
    import numpy as np

    from plumb.export.identity import BASE_KEY, hf_identity

    adapter_dir, out = Path(adapter_dir), Path(out_path)
    cfg = adapter_config(adapter_dir)
    base = resolve_base(cfg, adapter_dir, base_dir)
    config = read_config(base)
    arch = arch_for(config, str(base))
    n_layers, n_head = config["num_hidden_layers"], config["num_attention_heads"]
    n_head_kv = config.get("num_key_value_heads") or n_head
    alpha = float(cfg["lora_alpha"])
    if cfg.get("use_rslora"):  # peft scales by alpha / sqrt(r); llama.cpp by alpha / r
        alpha *= math.sqrt(cfg["r"])
        if cfg.get("rank_pattern"):
            raise PlumbError(f"{adapter_dir}: rsLoRA with per-module ranks cannot be exported.", exit_code=2)

    with atomic_writer(out, config) as writer:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        writer.add_string(BASE_KEY, hf_identity(base))
        for name, pair in sorted(lora_pairs(adapter_dir).items()):
            if name == "lm_head.weight" and config.get("tie_word_embeddings"):
                raise PlumbError(f"{adapter_dir}: the adapter trains lm_head, which this base ties to the token "
                                 "embeddings; llama.cpp cannot apply that. Leave lm_head out of target_modules.",
                                 exit_code=2)
            target = gguf_name(name, n_layers, arch)
            b = permute_qk(name, pair["B"], n_head, n_head_kv, arch)  # lora_b's rows are the projection's outputs
            writer.add_tensor(target + ".lora_a", np.ascontiguousarray(pair["A"], dtype=np.float32))
            writer.add_tensor(target + ".lora_b", np.ascontiguousarray(b, dtype=np.float32))
    return out


def export_merged(adapter_dir: str | Path, out_path: str | Path, base_dir: str | Path | None = None,
                  quant: str = "f16") -> Path:
    """Merge a peft LoRA adapter into its base and export the result as one GGUF (then quantize).

    For serving a tuned model alone, at any quantization; ``export_lora`` is the
    lighter choice when the base GGUF is already there.
    """
    import tempfile

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from plumb.export.hf_to_gguf import export_gguf

    adapter_dir = Path(adapter_dir)
    base = resolve_base(adapter_config(adapter_dir), adapter_dir, base_dir)
    read_config(base)  # refuse unsupported architectures before loading anything
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    with tempfile.TemporaryDirectory(prefix="plumb-merged-") as tmp:
        merged.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(base).save_pretrained(tmp)
        return export_gguf(tmp, out_path, quant)


def scaled_adapter(adapter_dir: str, scale: float) -> str:
    """A copy of the peft adapter whose update is ``scale`` times the original (every ``lora_B`` weight
    scaled), next to it as ``ADAPTER-x<scale>``: the weights between the base (0) and the adapter (1),
    as llama.cpp's per-call LoRA scale serves them (a server, which cannot scale per request, is given this
    copy). Written once; returns its directory."""
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
