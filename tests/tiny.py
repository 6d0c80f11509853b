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
