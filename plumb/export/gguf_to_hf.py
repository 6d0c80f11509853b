"""A person's GGUF -> an HF copy to train a LoRA on (the reverse of ``hf_to_gguf``).

transformers reads GGUF itself (``from_pretrained(dir, gguf_file=...)``): it
dequantizes every tensor with the gguf library, undoes llama.cpp's Q/K
permutation and Gemma's 1 + w norms, and converts the tokenizer. What it
leaves out is put back from the GGUF here, per architecture
(``arch.Arch.from_gguf``: Llama 3's rope scaling, Qwen3's head_dim, Gemma's
query scale, soft-capping and rope bases), together with the special tokens
and the chat template, so that the copy computes and tokenizes what llama.cpp
does on the original. ``make_hf_copy`` then checks that: the chat-formatted
probe below must tokenize to the same ids in the copy and in llama.cpp.

Before any of that, ``inspect_gguf`` refuses what cannot work, each with its
reason: a file that is not a GGUF or is cut short, an architecture plumb
cannot export a LoRA for or transformers cannot read, a quantization type the
gguf library cannot dequantize, a GGUF without a chat template.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from plumb.core.errors import PlumbError

HF_DIR_ADVICE = ("Use the model's Hugging Face directory instead: train with --policy hf:DIR, export the "
                 "base with `plumb export gguf --model hf:DIR`, and the adapter with --base hf:DIR.")
PROBE = [{"role": "user", "content": "Why is the sky blue? Answer in 2 sentences, naïve café 😀\n\ttabs  spaces."},
         {"role": "assistant", "content": "Sunlight scatters off air molecules; blue scatters most (42%)."}]


@dataclass
class GGUFInfo:
    path: Path
    arch: str                  # general.architecture
    name: str
    n_params: int
    types: dict[str, int]      # tensor type name -> count
    chat_template: str | None
    reader: Any


def open_gguf(path: str | Path):
    """A GGUFReader on ``path``, or a PlumbError saying it is missing, not a GGUF, or cut short."""
    import gguf

    p = Path(path)
    if not p.is_file():
        raise PlumbError(f"{p}: no such file.", exit_code=2)
    with open(p, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise PlumbError(f"{p} is not a GGUF file (it starts with {magic!r}, not b'GGUF').", exit_code=2)
    try:
        reader = gguf.GGUFReader(p)
    except ValueError as exc:
        if "GGMLQuantizationType" in str(exc):
            raise PlumbError(f"{p} uses a tensor type this gguf library ({gguf.__name__} "
                             f"{_version('gguf')}) does not know ({exc}). " + HF_DIR_ADVICE, exit_code=2) from None
        raise PlumbError(f"{p} is truncated or damaged: the gguf library cannot read it ({exc}). "
                         "Download or copy it again.", exit_code=2) from None
    except Exception as exc:  # the reader raises whatever numpy or struct raise on short data
        raise PlumbError(f"{p} is truncated or damaged: the gguf library cannot read it ({exc}). "
                         "Download or copy it again.", exit_code=2) from None
    if "split.count" in reader.fields and int(reader.fields["split.count"].contents()) > 1:
        raise PlumbError(f"{p} is one part of a split GGUF; merge the parts into one file first "
                         "(llama.cpp's `llama-gguf-split --merge FIRST.gguf OUT.gguf`).", exit_code=2)
    size = p.stat().st_size
    for t in reader.tensors:
        if t.data_offset + int(t.n_bytes) > size:
            raise PlumbError(f"{p} is truncated: tensor {t.name} ends at byte {t.data_offset + int(t.n_bytes)} "
                             f"but the file has {size}. Download or copy it again.", exit_code=2)
    return reader


@contextmanager
def alone(gguf: Path) -> Iterator[str]:
    """A temporary directory holding only (a link to) ``gguf``: transformers reads config.json and
    tokenizer files next to a GGUF instead of the GGUF's own, and a person's models folder may have them."""
    with tempfile.TemporaryDirectory(prefix="plumb-gguf-") as d:
        link = Path(d) / gguf.name
        try:
            link.symlink_to(gguf.resolve())
        except OSError:  # no symlinks here (Windows without the privilege)
            shutil.copyfile(gguf, link)
        yield d


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def _field(reader, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    return f.contents() if f is not None else default


def inspect_gguf(path: str | Path) -> GGUFInfo:
    """What plumb needs to know about a GGUF before making an HF copy, or a PlumbError saying why it can't."""
    import gguf
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    from plumb.export.arch import BY_GGUF

    p = Path(path)
    reader = open_gguf(p)
    arch = _field(reader, "general.architecture")
    if _field(reader, "general.type") == "adapter":
        raise PlumbError(f"{p} is a LoRA adapter, not a model; give the base model's GGUF.", exit_code=2)
    if arch not in BY_GGUF:
        raise PlumbError(f"{p} is a {arch!r} model, which plumb cannot export LoRA adapters for. Supported GGUF "
                         f"architectures: {', '.join(sorted(BY_GGUF))}.", exit_code=2)
    if arch not in GGUF_SUPPORTED_ARCHITECTURES:
        raise PlumbError(f"{p} is a {arch!r} model, which this transformers cannot read from GGUF. "
                         + HF_DIR_ADVICE, exit_code=2)
    readable = set(gguf.quants._type_traits) | {gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16}
    types: dict[str, int] = {}
    bad: dict[str, int] = {}
    n_params = 0
    for t in reader.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
        n_params += int(t.n_elements)
        if t.tensor_type not in readable:
            bad[t.tensor_type.name] = bad.get(t.tensor_type.name, 0) + 1
    if bad:
        kinds = ", ".join(f"{k} ({v} tensors)" for k, v in sorted(bad.items()))
        raise PlumbError(f"{p} uses quantization types the gguf library cannot dequantize: {kinds}. "
                         + HF_DIR_ADVICE + " Or use a GGUF of this model in another type (Q8_0, Q4_K_M, F16).",
                         exit_code=2)
    template = _field(reader, "tokenizer.chat_template")
    if not template:
        raise PlumbError(f"{p} has no chat template (tokenizer.chat_template), so plumb cannot format training "
                         "prompts the way the model will be served. Use the instruct/chat GGUF of this model.",
                         exit_code=2)
    return GGUFInfo(p, arch, str(_field(reader, "general.name", p.stem)), n_params, types, template, reader)


def _config(info: GGUFInfo):
    """transformers' config for the GGUF, with what its loader leaves out put back."""
    from transformers import AutoConfig

    from plumb.export.arch import BY_GGUF, BY_HF

    with alone(info.path) as d:
        config = AutoConfig.from_pretrained(d, gguf_file=info.path.name)
    arch = BY_HF["MistralForCausalLM"] if config.model_type == "mistral" else BY_GGUF[info.arch]
    if arch.from_gguf:
        tensors = {t.name: t.data for t in info.reader.tensors if t.name == "rope_freqs.weight"}
        for key, value in arch.from_gguf(dict(info.reader.fields), tensors, config.to_dict()).items():
            setattr(config, key, value)
    return config


def _pre_tokenizer(pre: str) -> dict | None:
    """tokenizer.json's pre_tokenizer for a llama.cpp byte-level BPE pre-tokenizer name plumb knows."""
    from plumb.export.vocab import SPLIT_REGEXES

    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    if pre == "gpt-2":
        return byte_level
    if pre == "smollm":
        return {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]}
    regex = next((r for r, name in SPLIT_REGEXES.items() if name == pre), None)
    if regex is None:
        return None
    split = {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}
    return {"type": "Sequence", "pretokenizers": [split, {**byte_level, "use_regex": False}]}


def _as_llama_cpp_splits(tok, reader) -> None:
    """Make the copy split text as llama.cpp does on the GGUF, where transformers' conversion differs:
    SentencePiece models get "▁" before every text piece after a special token when llama.cpp's
    add_space_prefix is on (transformers: only at the start); byte-level BPE gets the pre-tokenizer
    named in tokenizer.ggml.pre, and Llama 3's ignore_merges."""
    from tokenizers import Tokenizer

    data = json.loads(tok.backend_tokenizer.to_str())
    model, pre = _field(reader, "tokenizer.ggml.model"), _field(reader, "tokenizer.ggml.pre", "default")
    replace = {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
    if model == "llama":
        prefix = bool(_field(reader, "tokenizer.ggml.add_space_prefix", True))
        data["normalizer"] = ({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, replace]}
                              if prefix else replace)
        data["pre_tokenizer"] = None
    elif model == "gpt2" and _pre_tokenizer(pre) is not None:
        data["pre_tokenizer"] = _pre_tokenizer(pre)
        data["model"]["ignore_merges"] = pre == "llama-bpe"
    tok._tokenizer = Tokenizer.from_str(json.dumps(data))


def _tokenizer(info: GGUFInfo):
    """transformers' tokenizer for the GGUF, split as llama.cpp splits, with its special tokens and chat
    template from the GGUF."""
    from transformers import AutoTokenizer

    with alone(info.path) as d:
        tok = AutoTokenizer.from_pretrained(d, gguf_file=info.path.name)
    _as_llama_cpp_splits(tok, info.reader)
    tokens = info.reader.fields["tokenizer.ggml.tokens"]
    for kind in ("bos", "eos", "unk", "pad"):
        tid = _field(info.reader, f"tokenizer.ggml.{kind}_token_id")
        if tid is not None and int(tid) < len(tokens.data):
            setattr(tok, f"{kind}_token", tokens.contents(int(tid)))
    tok.chat_template = info.chat_template
    return tok


def check_tokenizer(tok, gguf_path: Path, messages: list[dict[str, str]] = PROBE) -> None:
    """The chat-formatted ``messages`` must tokenize to the same ids in ``tok`` and in llama.cpp."""
    import llama_cpp

    from plumb.export.quantize import captured_stderr

    text = tok.apply_chat_template(messages, tokenize=False)
    want = list(tok(text, add_special_tokens=False)["input_ids"])
    with captured_stderr():
        llm = llama_cpp.Llama(str(gguf_path), vocab_only=True, verbose=False)
    try:
        got = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    finally:
        llm.close()
    if got != want:
        at = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
        raise PlumbError(f"the HF copy's tokenizer splits a chat differently from llama.cpp on {gguf_path} "
                         f"(from token {at}: transformers {want[at:at + 5]}, llama.cpp {got[at:at + 5]}); training "
                         "on it would not match serving. " + HF_DIR_ADVICE, exit_code=2)


def make_hf_copy(gguf_path: str | Path, out_dir: str | Path, dtype: str = "auto",
                 progress: Callable[[str], None] | None = None, sha256: str | None = None) -> Path:
    """Dequantize ``gguf_path`` into an HF model directory ``out_dir`` (model, tokenizer, chat template).

    ``dtype``: ``float32``, ``bfloat16``, or ``auto`` (float32 up to 1.5B parameters, bfloat16 above:
    a 7B model is 28 GB in float32). ``sha256``, the GGUF's, is recorded in ``plumb-source.json``:
    LoRAs trained on the copy carry it, so they are recognised as belonging to the original GGUF.
    The caller makes ``out_dir`` atomic (``plumb.core.cache.publish_dir``).
    """
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()  # plumb says what it does itself
    say = progress or (lambda message: None)
    info = inspect_gguf(gguf_path)
    if dtype == "auto":
        dtype = "float32" if info.n_params <= 1_500_000_000 else "bfloat16"
    config = _config(info)
    tok = _tokenizer(info)
    check_tokenizer(tok, info.path)
    say(f"dequantizing {info.path.name} ({info.arch}, {info.n_params / 1e6:.0f}M parameters, "
        f"{', '.join(sorted(info.types))}) into a {dtype} HF copy")
    with alone(info.path) as d:
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=info.path.name, config=config,
                                                     dtype=getattr(torch, dtype))
    model.hf_quantizer = None  # the weights are plain floats now; save them as such
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out = Path(out_dir)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    source = {"gguf": str(info.path.resolve()), "arch": info.arch, "dtype": dtype, "from_sha256": sha256}
    (out / "plumb-source.json").write_text(json.dumps(source, indent=2), encoding="utf-8")
    return out
