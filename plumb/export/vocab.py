"""A Hugging Face tokenizer (tokenizer.json) -> GGUF tokenizer metadata, as llama.cpp reads it.

Two kinds, told apart by tokenizer.json's model:

* byte-level BPE (``tokenizer.ggml.model = "gpt2"``: SmolLM, Llama 3, Qwen2/2.5/3):
  vocabulary, token types, merges, and the name of llama.cpp's pre-tokenizer
  (``tokenizer.ggml.pre``), the regex that splits text before BPE. llama.cpp's
  converter recognises it by hashing the tokenization of a probe string, which
  only works for the exact released vocabularies; plumb reads the
  pre-tokenizer's structure instead (``pre_tokenizer_name``), so a fine-tune
  with an extended vocabulary, or a tiny test tokenizer, converts too.
* SentencePiece BPE with byte fallback (``"llama"``: Llama 2, Mistral, Gemma),
  as transformers keeps it in tokenizer.json: "▁" for spaces, ``<0xNN>`` byte
  tokens. llama.cpp's SentencePiece tokenizer merges the pair whose token has
  the highest score; BPE merges the pair of lowest rank, so each token's score
  is minus the rank of the merge that makes it.

Both add the special token ids, whether BOS/EOS are added (what the tokenizer
does, probed), and the chat template, which must be there: plumb serves a
model with the template it was trained with, never a guessed one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from plumb.core.errors import PlumbError

# The split regexes of the byte-level BPE pre-tokenizers plumb maps (tokenizer.json spelling).
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPLIT_REGEXES = {LLAMA3_REGEX: "llama-bpe", QWEN2_REGEX: "qwen2"}
PRE_TOKENIZERS = ("smollm: [Digits(individual), ByteLevel]", "gpt-2: [ByteLevel]",
                  "llama-bpe: [Split(Llama 3 regex), ByteLevel]", "qwen2: [Split(Qwen2 regex), ByteLevel]")
TEMPLATE_HOWTO = ("Give it one: write the template (Jinja, as in the instruct model's tokenizer_config.json) to "
                  "{dir}/chat_template.jinja, or set \"chat_template\" in {dir}/tokenizer_config.json; the "
                  "instruct version of the same model has the right one.")


def _byte_level_ok(part: dict[str, Any], regex: bool) -> bool:
    return part.get("type") == "ByteLevel" and bool(part.get("use_regex", True)) == regex \
        and not part.get("add_prefix_space")


def pre_tokenizer_name(tokenizer_json: dict[str, Any]) -> str:
    """The llama.cpp pre-tokenizer that splits text like this byte-level BPE tokenizer.json does."""
    norm = tokenizer_json.get("normalizer")
    if norm and norm.get("type") != "NFC":  # Qwen2's NFC leaves ordinary text as it is
        raise PlumbError(f"cannot export the tokenizer: its normalizer {norm.get('type')!r} has no llama.cpp "
                         "equivalent for byte-level BPE.", exit_code=2)
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and _byte_level_ok(parts[1], True):
        return "smollm"
    if kinds == ["ByteLevel"] and _byte_level_ok(parts[0], True):
        return "gpt-2"
    if kinds == ["Split", "ByteLevel"] and _byte_level_ok(parts[1], False) \
            and str(parts[0].get("behavior", "")).lower() == "isolated" and not parts[0].get("invert"):
        name = SPLIT_REGEXES.get((parts[0].get("pattern") or {}).get("Regex"))
        if name:
            return name
    raise PlumbError(
        f"cannot export the tokenizer: its pre-tokenizer {kinds} is not one plumb maps to llama.cpp. "
        f"Supported: {'; '.join(PRE_TOKENIZERS)}.", exit_code=2)


def load_tokenizer(model_dir: Path):
    """(the fast tokenizer's tokenizer.json as a dict, the transformers tokenizer), or a PlumbError saying
    what is missing. A directory with only SentencePiece's tokenizer.model works where transformers can
    convert it (the sentencepiece package installed); tokenizer.json is what plumb reads."""
    from transformers import AutoTokenizer

    missing = PlumbError(f"cannot export {model_dir}: no tokenizer plumb can read. It needs the model's fast "
                         "tokenizer, tokenizer.json (save it with AutoTokenizer.from_pretrained(...)"
                         ".save_pretrained(DIR)).", exit_code=2)
    if not any((model_dir / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        raise missing
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except Exception as exc:  # transformers raises many kinds for a tokenizer it cannot build
        raise PlumbError(f"{missing} (transformers: {exc})", exit_code=2) from None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise missing
    return json.loads(backend.to_str()), tokenizer


def _spm_scores(model: dict[str, Any]) -> dict[str, float]:
    """Score of each token made by a merge: minus the rank of its first merge."""
    scores: dict[str, float] = {}
    for rank, merge in enumerate(model.get("merges") or []):
        a, b = merge.split(" ", 1) if isinstance(merge, str) else merge
        scores.setdefault(a + b, -float(rank))
    return scores


def _adds_space_prefix(tokenizer_json: dict[str, Any]) -> bool:
    """Whether llama.cpp should put "▁" before each text piece (``add_space_prefix``, applied at the start
    and after every special token): yes for a Prepend("▁") normalizer or Metaspace "always" (Llama 2,
    Mistral as converted by older transformers), no for Gemma. Metaspace "first" (newer conversions)
    prefixes only text at the very start; a chat prompt starts with a special token, after which it
    adds nothing, so "no" is what makes chat prompts tokenize alike."""
    def walk(node: Any):
        if isinstance(node, dict):
            yield node
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)

    for node in walk([tokenizer_json.get("normalizer"), tokenizer_json.get("pre_tokenizer")]):
        if node.get("type") == "Prepend" and node.get("prepend") == "▁":
            return True
        if node.get("type") == "Metaspace" and (node.get("prepend_scheme") == "always"
                                                or ("prepend_scheme" not in node and node.get("add_prefix_space"))):
            return True
    return False


def _token_lists(tokenizer, vocab_size: int, spm: dict[str, float] | None, unk: str | None):
    import gguf

    reverse = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types, scores = [], [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            scores.append(-1000.0)
            continue
        tok = reverse[i]
        score = 0.0
        if i in added:
            kind = gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED
        elif spm is not None and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", tok):
            kind = gguf.TokenType.BYTE
        elif spm is not None and tok == unk:
            kind = gguf.TokenType.UNKNOWN
        else:
            kind = gguf.TokenType.NORMAL
            if spm is not None and len(tok) > 1:
                score = spm.get(tok, -1e9)  # a token no merge makes: BPE never produces it
        tokens.append(tok)
        types.append(kind)
        scores.append(score)
    return tokens, types, scores


def write_tokenizer(writer, model_dir: Path, vocab_size: int) -> None:
    """Vocabulary, special ids, BOS/EOS behaviour and chat template (like ``_set_vocab_gpt2`` /
    ``_set_vocab_sentencepiece`` in convert_hf_to_gguf.py)."""
    import gguf

    tok_json, tokenizer = load_tokenizer(model_dir)
    model = tok_json.get("model") or {}
    if model.get("type") != "BPE":
        raise PlumbError(f"cannot export {model_dir}: tokenizer model {model.get('type')!r} is not supported "
                         "(byte-level BPE, or SentencePiece-style BPE with byte fallback).", exit_code=2)
    if not tokenizer.chat_template:
        raise PlumbError(f"cannot export {model_dir}: its tokenizer has no chat template, and plumb serves a "
                         "model only with the template it was trained with. "
                         + TEMPLATE_HOWTO.format(dir=model_dir), exit_code=2)
    spm = _spm_scores(model) if model.get("byte_fallback") else None
    tokens, types, scores = _token_lists(tokenizer, vocab_size, spm, model.get("unk_token"))
    if spm is not None and sum(t == gguf.TokenType.BYTE for t in types) != 256:
        # llama.cpp falls back to <0xNN> for any character not in the vocabulary, and aborts without them
        raise PlumbError(f"cannot export {model_dir}: its SentencePiece vocabulary lacks some of the 256 byte "
                         "tokens <0x00>..<0xFF> that byte fallback needs.", exit_code=2)
    if spm is None:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre_tokenizer_name(tok_json))
    else:
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_scores(scores)
        writer.add_add_space_prefix(_adds_space_prefix(tok_json))
    writer.add_token_list(tokens)
    writer.add_token_types(types)

    special = gguf.SpecialVocab(model_dir, load_merges=spm is None, n_vocab=vocab_size)
    for kind in ("bos", "eos", "unk", "pad"):  # the tokenizer's own, over whatever config files say
        tid = getattr(tokenizer, f"{kind}_token_id", None)
        if tid is not None:
            special.special_token_ids[kind] = tid
    # Whether BOS/EOS are added is what the tokenizer does, not what a config says.
    probe = tokenizer("a")["input_ids"]
    special.add_special_token["bos"] = tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id]
    special.add_special_token["eos"] = tokenizer.eos_token_id is not None and probe[-1:] == [tokenizer.eos_token_id]
    special.chat_template = tokenizer.chat_template
    special.add_to_gguf(writer, quiet=True)
