"""A tiny Llama-architecture model and tokenizer, built locally in seconds.

The tokenizer mirrors SmolLM2's layout (byte-level BPE with single-digit
pre-splitting, ChatML special tokens and template) so the same export and
serving code paths run on it as on the real starter model; it is trained on
the fly on a small synthetic corpus. The model is a random-init
LlamaForCausalLM with tied embeddings, well under 1M parameters. Both are
written with save_pretrained and meant to be loaded back with
AutoModelForCausalLM / AutoTokenizer, as a real model would be.
"""

from __future__ import annotations

import random
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_WORDS = (
    "the a an answer question model short long good bad yes no water fire earth air sun moon star "
    "cat dog bird fish tree river mountain city road book code test value list number word sentence "
    "first then because so but and or if when why how what where who is are was were be have has "
    "make take give find keep tell ask think know see say use work call try need feel leave put mean "
    "red blue green small large fast slow hot cold new old high low right left clear plain simple"
).split()


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 14))]
        sentence = " ".join(words).capitalize() + rng.choice([".", "?", "!", ","])
        if rng.random() < 0.3:
            sentence += f" {rng.randint(0, 2025)} {rng.choice(['km', 'kg', '%', '$'])}"
        lines.append(f"<|im_start|>user\n{sentence}<|im_end|>\n<|im_start|>assistant\n{sentence[::-1]}<|im_end|>\n")
        lines.append(sentence)
    return lines


def build_tokenizer(vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
        unk_token="<|endoftext|>", pad_token="<|im_end|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(tokenizer, seed: int = 0, hidden: int = 64, layers: int = 2):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # Random init gives near-uniform logits; a larger spread makes greedy decoding decisive,
    # which parity tests between backends need.
    with torch.no_grad():
        model.model.embed_tokens.weight.normal_(0.0, 0.5)
    return model.eval()


def build_tiny(out_dir: str | Path, seed: int = 0) -> Path:
    out = Path(out_dir)
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, seed=seed)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def random_lora(model_dir: str | Path, out_dir: str | Path, targets: list[str], r: int, std: float,
                seed: int, only_b: bool = True):
    """A peft LoRA adapter on ``model_dir`` with non-zero random weights, saved to ``out_dir``.

    Returns the peft model (adapter active) so a test can compare against its merge.
    ``only_b`` keeps peft's A init and draws B (peft starts B at zero); otherwise both.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if ("lora_B" if only_b else "lora_") in name:
                p.normal_(0.0, std)
    peft_model.save_pretrained(out_dir)
    return peft_model


# -- other architectures -----------------------------------------------------------------
#
# Tiny random models of the architectures people run locally, each with a tokenizer of the
# kind its real counterpart uses, trained on the fly: byte-level BPE with the model's own
# pre-tokenizer regex (Qwen2/Qwen3, Llama 3), or a SentencePiece-style BPE with byte
# fallback and "▁" for spaces (Llama 2/Mistral, Gemma) built with the `tokenizers` library,
# the form transformers keeps in tokenizer.json. The chat templates are shortened versions
# of the real ones with the same special tokens and BOS handling.

QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")

CHATML_SYSTEM_TEMPLATE = (  # Qwen2.5's shape: a default system message when none is given
    "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% set system = messages[0]['content'] + '\n\n' if messages[0]['role'] == 'system' else '' %}"
    "{% for message in messages if message['role'] != 'system' %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + (system if loop.first else '') + message['content'] + ' [/INST]' }}"
    "{% else %}{{ message['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
)
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% set system = messages[0]['content'] + '\n\n' if messages[0]['role'] == 'system' else '' %}"
    "{% for message in messages if message['role'] != 'system' %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (system if loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

# style -> (special tokens in id order, bos, eos, pad, chat template)
BPE_STYLES = {
    "qwen2": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None, "<|im_end|>", "<|endoftext|>",
              CHATML_SYSTEM_TEMPLATE),
    "llama3": (["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
               "<|begin_of_text|>", "<|eot_id|>", "<|end_of_text|>", LLAMA3_TEMPLATE),
}
SPM_STYLES = {  # Llama 2 / Mistral v0.3: "▁" prefixed to the text; Gemma: not
    "llama": (["<unk>", "<s>", "</s>", "[INST]", "[/INST]"], "<s>", "</s>", "</s>", MISTRAL_TEMPLATE),
    "gemma": (["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"], "<bos>", "<eos>", "<pad>",
              GEMMA_TEMPLATE),
}


def _fast(tok, specials, bos, eos, pad, template, unk=None):
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    if bos is not None:  # the real tokenizers add BOS to every encoding
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B:1",
                                                           special_tokens=[(bos, specials.index(bos))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad,
                                   unk_token=unk)
    fast.chat_template = template
    return fast


def build_bpe_tokenizer(style: str, vocab_size: int = 512):
    """Byte-level BPE split by ``style``'s regex: "qwen2" (Qwen2/2.5/3) or "llama3" (Llama 3.x)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    specials, bos, eos, pad, template = BPE_STYLES[style]
    regex = QWEN2_REGEX if style == "qwen2" else LLAMA3_REGEX
    tok = Tokenizer(models.BPE(ignore_merges=style == "llama3"))  # Llama 3's tokenizer.json ignores merges
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer)
    return _fast(tok, specials, bos, eos, pad, template)


def build_spm_tokenizer(style: str, vocab_size: int = 600):
    """SentencePiece-style BPE (byte fallback, "▁" for spaces) as transformers stores it in
    tokenizer.json: "llama" (Llama 2, Mistral: "▁" prefixed) or "gemma" (Gemma 2/3: not)."""
    import json

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    specials, bos, eos, pad, template = SPM_STYLES[style]
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    replace = normalizers.Replace(" ", "▁")
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), replace]) if style == "llama" else replace
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")  # no merges across words
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials + byte_tokens, show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    # Byte tokens are ordinary vocabulary in SentencePiece (and in transformers' conversion), not added tokens;
    # and like the real tokenizers, the text is not pre-split: BPE runs on the whole string.
    data = json.loads(tok.to_str())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] not in byte_tokens]
    data["pre_tokenizer"] = None
    tok = Tokenizer.from_str(json.dumps(data))
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    tok.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if style == "llama" else []))
    return _fast(tok, specials, bos, eos, pad, template, unk="<unk>" if style == "llama" else "<unk>")


def build_sentencepiece_tokenizer(style: str, out_dir: str | Path, vocab_size: int = 600):
    """A real SentencePiece BPE model (tokenizer.model, trained by the ``sentencepiece`` package, which
    plumb does not depend on) loaded by transformers, which converts it to its fast form: the path of a
    directory that holds only tokenizer.model. ``style`` as in SPM_STYLES."""
    import io

    import sentencepiece as spm
    from transformers import GemmaTokenizer, LlamaTokenizer

    specials, bos, eos, pad, template = SPM_STYLES[style]
    llama = style == "llama"
    ids = {p: specials.index(p) for p in ("<unk>", bos, eos)}
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, add_dummy_prefix=llama, remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, split_digits=True, minloglevel=2,
        user_defined_symbols=[t for t in specials if t not in ids and t != pad],
        unk_id=ids["<unk>"], bos_id=ids[bos], eos_id=ids[eos], pad_id=-1 if pad == eos else specials.index(pad),
        bos_piece=bos, eos_piece=eos, pad_piece=pad if pad != eos else "<pad>")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(model.getvalue())
    tok = (LlamaTokenizer if llama else GemmaTokenizer).from_pretrained(str(out))
    tok.chat_template = template
    return tok


# arch -> (tokenizer builder args, config class name, config overrides)
ARCHS = {
    "llama3": (("bpe", "llama3"), "LlamaConfig",
               dict(rope_theta=500000.0, tie_word_embeddings=True,
                    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 64})),
    "mistral": (("spm", "llama"), "MistralConfig", dict(sliding_window=None, tie_word_embeddings=False)),
    "qwen2": (("bpe", "qwen2"), "Qwen2Config", dict(tie_word_embeddings=True, rope_theta=1000000.0)),
    "qwen2-untied": (("bpe", "qwen2"), "Qwen2Config", dict(tie_word_embeddings=False, rope_theta=1000000.0)),
    "qwen3": (("bpe", "qwen2"), "Qwen3Config", dict(tie_word_embeddings=True, head_dim=16, rope_theta=1000000.0)),
    "gemma2": (("spm", "gemma"), "Gemma2Config",
               dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=256, tie_word_embeddings=True)),
    "gemma3": (("spm", "gemma"), "Gemma3TextConfig",
               dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=256, num_hidden_layers=6,
                    tie_word_embeddings=True, rope_scaling={"rope_type": "linear", "factor": 8.0},
                    rope_theta=1000000.0, rope_local_base_freq=10000.0)),
}


def build_arch_tokenizer(arch: str):
    kind, style = ARCHS[arch][0]
    return build_bpe_tokenizer(style) if kind == "bpe" else build_spm_tokenizer(style)


def build_arch_model(arch: str, tokenizer, seed: int = 0, hidden: int = 64, layers: int = 2, spread: float = 0.2):
    """A random-init model of ``arch`` (a key of ARCHS) sized for ``tokenizer``, with weights drawn
    wide enough (``spread``) that greedy decoding is decisive and differs by prompt."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    _, config_class, extra = ARCHS[arch]
    kwargs = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                  num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=512, rms_norm_eps=1e-6,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id)
    kwargs.update(extra)
    config = getattr(transformers, config_class)(**kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    # Gemma multiplies the input embeddings by sqrt(hidden): keep its inputs in range, its logits wide
    embed = 0.25 if arch.startswith("gemma") else 0.5
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embed" in name or "lm_head" in name:
                p.normal_(0.0, embed)
            elif p.ndim == 2:
                p.normal_(0.0, spread)
            elif name.endswith("norm.weight") and arch.startswith("gemma"):
                p.normal_(0.0, 0.1)  # Gemma's norms are 1 + w: make the +1 matter
            elif name.endswith(".bias") or name.endswith("norm.weight"):
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def build_arch(arch: str, out_dir: str | Path, seed: int = 0, tokenizer=None) -> Path:
    """Tiny ``arch`` model + tokenizer saved with save_pretrained into ``out_dir``."""
    out = Path(out_dir)
    tokenizer = tokenizer or build_arch_tokenizer(arch)
    build_arch_model(arch, tokenizer, seed=seed).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
