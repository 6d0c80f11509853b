"""Option log-probs (``ctx.option_logprobs``, a backend's ``option_logprobs``): llama.cpp vs transformers, normalisation, LoRA,
prefix reuse, and the rule for distinct tokens with the same text."""

from __future__ import annotations

import math

import numpy as np
import pytest

from plumb.core.errors import PlumbError
from plumb.core.records import Chat, ModelSpec

CHATS = [Chat.from_user("Why is the sky blue?"), Chat.from_user("Is fire cold? Answer A or B.", system="Be brief."),
         Chat.from_user("Tell me a story about 12 cats")]
# single tokens, several tokens, a newline (the tiny model's favourite), non-ASCII, an emoji whose
# first byte-level token is a piece of a character, and the empty option
OPTIONS = ["A", "B", "tie", "\n", "yes because", "The answer is 42.", "naïve café", "😀", ""]
TOL = 0.1  # |llama.cpp - transformers| per option, f16 weights (as the export parity tests allow on logits)


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory):
    """(peft model, GGUF LoRA) of a random adapter that moves the tiny model a lot."""
    from plumb.export import export_lora
    from tests.tiny import random_lora

    out = tmp_path_factory.mktemp("option-lora")
    peft_model = random_lora(tiny_model_dir, out / "a", ["q_proj", "v_proj", "down_proj"], r=4, std=1.0, seed=0,
                             only_b=False)
    return peft_model.eval(), export_lora(out / "a", out / "a.gguf", base_dir=tiny_model_dir)


def llama(gguf, lora=None, scale=1.0) -> ModelSpec:
    return ModelSpec("llamacpp", str(gguf), str(lora) if lora else None, scale)


def test_llamacpp_matches_transformers_through_the_backends(tiny_gguf, tiny_model_dir):
    from plumb.core.context import HookContext
    from plumb.core.plugins import get_plugin_manager
    from plumb import llamacpp

    loaded = llamacpp.load(str(tiny_gguf))
    assert max(len(llamacpp.option_paths(loaded, o)[0]) for o in OPTIONS) >= 4  # multi-token options are scored
    ctx = HookContext(get_plugin_manager(entry_points=False))
    ll = ctx.option_logprobs(llama(tiny_gguf), CHATS, OPTIONS)
    hf = ctx.option_logprobs(ModelSpec("hf", str(tiny_model_dir)), CHATS, OPTIONS)
    assert ctx.option_logprobs(ModelSpec("anthropic", "claude-test"), CHATS, OPTIONS) is None
    assert len(ll) == len(hf) == len(CHATS)
    for a, b in zip(ll, hf):
        assert list(a) == list(b) == OPTIONS
        assert a[""] == b[""] == 0.0
        for option in OPTIONS:
            assert a[option] <= 1e-6 and abs(a[option] - b[option]) < TOL, (option, a[option], b[option])
        assert a["The answer is 42."] < a["A"]  # a longer continuation is less likely


def test_single_token_options_cover_the_vocabulary(tiny_gguf, adapter):
    """Every text that is one token of its own, plus the mass of the tokens that are not
    (special tokens, pieces of characters), adds up to 1 — on a distribution far from one-hot."""
    from plumb import llamacpp

    spec = llama(tiny_gguf, adapter[1])
    loaded = llamacpp.load(str(tiny_gguf))
    vocab = loaded.vocab_text()
    options = sorted({text for tid, text in enumerate(vocab.texts) if "\ufffd" not in text
                      and loaded.llm.tokenize(text.encode(), add_bos=False, special=False) == [tid]})
    assert len(options) > 300
    got = llamacpp.option_logprobs(spec, CHATS[:1], options)[0]
    covered = sum(math.exp(v) for v in got.values())
    logp = llamacpp.log_softmax(llamacpp.prefill(loaded.llm, llamacpp.prompt_tokens(loaded, CHATS[0])))
    rest = float(np.exp(logp[[t for t, text in enumerate(vocab.texts) if text not in got]]).sum())
    assert max(got.values()) < math.log(0.5)  # no option takes most of the mass
    assert covered + rest == pytest.approx(1.0, abs=1e-6) and covered > 0.5


def test_lora_adapter_changes_option_logprobs(tiny_gguf, tiny_model_dir, adapter):
    from plumb import llamacpp
    from plumb.train import generate as hf_generate

    peft_model, lora = adapter
    base = llamacpp.option_logprobs(llama(tiny_gguf), CHATS, OPTIONS)
    tuned = llamacpp.option_logprobs(llama(tiny_gguf, lora, 1.0), CHATS, OPTIONS)
    zero = llamacpp.option_logprobs(llama(tiny_gguf, lora, 0.0), CHATS, OPTIONS)
    for b, t, z in zip(base, tuned, zero):
        assert max(abs(t[o] - b[o]) for o in OPTIONS) > 1.0
        assert z == pytest.approx(b, abs=1e-4)
    _, tok = hf_generate.load(str(tiny_model_dir))
    merged = hf_generate.option_logprobs_with(peft_model, tok, CHATS, OPTIONS)  # peft applies the same adapter
    for t, m in zip(tuned, merged):
        for option in OPTIONS:
            assert abs(t[option] - m[option]) < TOL, (option, t[option], m[option])


def test_shared_prefix_is_evaluated_once(tiny_gguf, monkeypatch):
    from plumb import llamacpp

    spec = llama(tiny_gguf)
    loaded = llamacpp.load(str(tiny_gguf))
    preamble = "You judge answers against these principles: be brief, be kind, be right. " * 4
    chats = [Chat.from_user(preamble + f"Answer {i}: {a}") for i, a in enumerate(["yes.", "no.", "maybe so.", "42"])]
    cold = []
    for chat in chats:
        loaded.llm.n_tokens = 0  # drop the cache: every prompt evaluated in full
        cold += llamacpp.option_logprobs(spec, [chat], OPTIONS)
    evaluated = []
    original = loaded.llm.eval
    monkeypatch.setattr(loaded.llm, "eval", lambda tokens: (evaluated.append(len(tokens)), original(tokens))[1])
    loaded.llm.n_tokens = 0
    warm = llamacpp.option_logprobs(spec, chats, OPTIONS)
    prompt_len = len(llamacpp.prompt_tokens(loaded, chats[0]))
    option_evals = sum(max(len(p) - 1, 0) for o in OPTIONS for p in llamacpp.option_paths(loaded, o))
    assert evaluated[0] == prompt_len  # the first prompt cold
    suffixes = sum(evaluated) - prompt_len - len(chats) * option_evals
    assert 0 < suffixes < prompt_len / 4, (evaluated, prompt_len)  # the others only evaluated what is new
    for w, c in zip(warm, cold):
        assert w == pytest.approx(c, abs=1e-3)


def test_tokens_with_the_same_text_count_together(tiny_gguf, tiny_model_dir, monkeypatch):
    """Give the token of "B" the text "A": option "A" is then either token, top_logprobs shows one "A"."""
    from plumb import llamacpp
    from plumb.train import generate as hf_generate

    spec = llama(tiny_gguf)
    loaded = llamacpp.load(str(tiny_gguf))
    before = llamacpp.option_logprobs(spec, CHATS[:1], ["A", "B", "tie"])[0]
    (a,), (b,) = (loaded.llm.tokenize(t.encode(), add_bos=False, special=False) for t in "AB")
    texts = list(loaded.vocab_text().texts)
    texts[b] = "A"
    monkeypatch.setattr(loaded, "vocab", llamacpp.VocabText(texts))
    after = llamacpp.option_logprobs(spec, CHATS[:1], ["A", "tie"])[0]
    assert after["A"] == pytest.approx(np.logaddexp(before["A"], before["B"]), abs=1e-6)
    assert after["tie"] == pytest.approx(before["tie"], abs=1e-6)
    # the piece-of-a-character rule: the emoji's first token is one of 128 "\ufffd" tokens, counted alone
    assert len(llamacpp.option_paths(loaded, "😀")) == 1 and len(loaded.vocab.ids["\ufffd"]) > 1

    logits = llamacpp.prefill(loaded.llm, llamacpp.prompt_tokens(loaded, CHATS[0]))
    logp = llamacpp.log_softmax(logits)
    top = llamacpp.top_logprobs(loaded, logits, loaded.llm.n_vocab())
    assert "B" not in top and top["A"] == pytest.approx(np.logaddexp(logp[a], logp[b]), abs=1e-9)
    assert sum(math.exp(v) for v in top.values()) == pytest.approx(1.0, abs=1e-6)  # nothing dropped
    assert list(top.values()) == sorted(top.values(), reverse=True)

    model, tok = hf_generate.load(str(tiny_model_dir))  # transformers counts the same way
    texts = list(hf_generate.vocab_texts(tok))
    texts[b] = "A"
    monkeypatch.setattr(tok, "_plumb_vocab_texts", texts)
    hf = hf_generate.option_logprobs_with(model, tok, CHATS[:1], ["A"])[0]
    assert abs(hf["A"] - after["A"]) < TOL


def test_prompt_and_option_longer_than_context(tiny_gguf):
    from plumb import llamacpp

    with pytest.raises(PlumbError, match=r"is \d+ tokens but llamacpp:.*context of 512 tokens"):
        llamacpp.option_logprobs(llama(tiny_gguf), [Chat.from_user("word " * 600)], ["A"])
    fits = Chat.from_user("word " * 240)  # fits alone, not with a long option after it
    assert llamacpp.option_logprobs(llama(tiny_gguf), [fits], ["A"])[0]["A"] < 0
    with pytest.raises(PlumbError, match=r"context of 512 tokens \(the longest option needs \d+ more\)"):
        llamacpp.option_logprobs(llama(tiny_gguf), [fits], ["A", "word " * 300])
