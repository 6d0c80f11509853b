"""The tiny test model loads from disk like a real one and is small and deterministic."""

from __future__ import annotations


def test_tiny_model_loads_back_through_auto_classes(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert model.config.model_type == "llama"
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id is not None

    chat = [{"role": "user", "content": "Hello 2024"}]
    prompt = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert prompt == "<|im_start|>user\nHello 2024<|im_end|>\n<|im_start|>assistant\n"
    full = tok.apply_chat_template(chat + [{"role": "assistant", "content": "Hi"}], tokenize=False)
    p_ids, f_ids = tok(prompt)["input_ids"], tok(full)["input_ids"]
    assert f_ids[: len(p_ids)] == p_ids
    # digits split one by one, as in SmolLM2's pre-tokenizer
    assert [t for t in tok.tokenize("2024")] == ["2", "0", "2", "4"]

    with torch.no_grad():
        a = model(torch.tensor([f_ids])).logits
        b = model(torch.tensor([f_ids])).logits
    assert torch.equal(a, b)
    assert a.shape[-1] == len(tok)
