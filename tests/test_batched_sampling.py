"""Batched sampling in the llama.cpp backend (plumb.llamacpp.batch) on the tiny GGUF."""

from __future__ import annotations

import pytest

from plumb.core.records import Chat, ModelSpec, SamplingParams

CHATS = [Chat.from_user("Why is the sky blue?"), Chat.from_user("Tell me a story", system="Be brief."),
         Chat.from_user("What number is 17?")]


@pytest.fixture(scope="module")
def lively(tiny_model_dir, tiny_gguf, tmp_path_factory):
    """The tiny model with a strong random LoRA: its samples vary by token, unlike the bare tiny model's newlines."""
    from plumb.export import export_lora
    from tests.tiny import random_lora

    out = tmp_path_factory.mktemp("batch-lora")
    random_lora(tiny_model_dir, out / "a", ["q_proj", "v_proj", "down_proj"], r=4, std=1.0, seed=0, only_b=False)
    return ModelSpec("llamacpp", str(tiny_gguf), str(export_lora(out / "a", out / "a.gguf", base_dir=tiny_model_dir)))


@pytest.fixture
def llamacpp():
    from plumb import llamacpp

    return llamacpp


def texts(rows):
    return [[c.text for c in r] for r in rows]


def test_n_samples_per_prompt_counts_and_reasons(llamacpp, lively):
    params = SamplingParams(n=4, temperature=1.0, max_tokens=10, seed=3)
    out = llamacpp.generate(lively, CHATS, params, batched=True)
    one = llamacpp.generate(lively, CHATS, SamplingParams(temperature=0, max_tokens=1), batched=False)
    assert [len(r) for r in out] == [4, 4, 4]
    for row, ref in zip(out, one):
        assert len(set(c.text for c in row)) > 1  # four different samples
        for c in row:
            assert c.backend == "llamacpp" and c.model == str(lively) and c.params["n"] == 4
            assert c.prompt_tokens == ref[0].prompt_tokens
            assert (c.finish_reason, c.completion_tokens) == ("length", 10) or c.finish_reason == "stop"


def test_greedy_identical_to_one_at_a_time(llamacpp, lively, tiny_gguf):
    for spec in (lively, ModelSpec("llamacpp", str(tiny_gguf))):
        params = SamplingParams(n=2, temperature=0, max_tokens=16)
        batched = llamacpp.generate(spec, CHATS, params, batched=True)
        alone = llamacpp.generate(spec, CHATS, params, batched=False)
        assert texts(batched) == texts(alone)
        assert [[c.finish_reason for c in r] for r in batched] == [[c.finish_reason for c in r] for r in alone]
        assert all(r[0].text == r[1].text for r in batched)


def test_seeded_runs_reproducible_whatever_the_batch(llamacpp, lively, monkeypatch):
    from plumb.llamacpp import batch as llamacpp_batch

    params = SamplingParams(n=3, temperature=1.2, max_tokens=12, seed=11)
    first = llamacpp.generate(lively, CHATS, params)  # auto: batched
    assert texts(first) == texts(llamacpp.generate(lively, CHATS, params))
    assert texts(llamacpp.generate(lively, CHATS[1:], params)) == texts(first)[1:]  # other prompts, same samples
    other = llamacpp.generate(lively, CHATS, SamplingParams(n=3, temperature=1.2, max_tokens=12, seed=12))
    assert texts(other) != texts(first)
    # completion j is seeded with seed + j: the 2nd sample of seed 11 is the 1st of seed 12
    assert [r[1] for r in texts(first)] == [r[0] for r in texts(other)]

    loaded = llamacpp.load(lively.target)
    small = llamacpp_batch.BatchContext(loaded, cells=64)
    small.cells = 60  # plan rounds as if it had 60 cells: one prompt's 3 completions at most
    rounds = llamacpp_batch.plan([llamacpp.prompt_tokens(loaded, c) for c in CHATS], 3, 12, loaded.n_ctx,
                                 small.cells, small.seqs)
    assert len(rounds) >= 3
    big, loaded.batch = loaded.batch, small
    try:
        assert texts(llamacpp.generate(lively, CHATS, params)) == texts(first)
    finally:
        loaded.batch = big
        small.close()


def test_stop_strings_and_max_tokens_per_sequence(llamacpp, lively):
    params = SamplingParams(n=4, temperature=1.0, max_tokens=12, seed=5)
    full = llamacpp.generate(lively, CHATS[:2], params)
    flat = [c for r in full for c in r]
    stop = next(ch for ch in "aeiou rtn" if 0 < sum(ch in c.text for c in flat) < len(flat))
    cut = [c for r in llamacpp.generate(lively, CHATS[:2], SamplingParams(**{**params.to_dict(), "stop": (stop,)}))
           for c in r]
    for a, b in zip(flat, cut):
        if stop in a.text:
            assert b.text == a.text[: a.text.index(stop)] and b.finish_reason == "stop"
            assert b.completion_tokens <= a.completion_tokens
        else:
            assert (b.text, b.finish_reason, b.completion_tokens) == (a.text, a.finish_reason, a.completion_tokens)
    short = [c for r in llamacpp.generate(lively, CHATS[:2], SamplingParams(**{**params.to_dict(), "max_tokens": 5}))
             for c in r]
    for a, b in zip(flat, short):
        assert a.text.startswith(b.text)
        assert (b.finish_reason, b.completion_tokens) == ("length", 5) or b.finish_reason == a.finish_reason == "stop"


def test_end_of_generation_stops_one_sequence(llamacpp, lively, monkeypatch):
    import llama_cpp

    from plumb.llamacpp import batch as llamacpp_batch

    params = SamplingParams(n=4, temperature=1.0, max_tokens=12, seed=5)
    seqs = []
    run_round = llamacpp_batch.run_round
    monkeypatch.setattr(llamacpp_batch, "run_round", lambda *a: (lambda r: (seqs.extend(r), r)[1])(run_round(*a)))
    full = [c for r in llamacpp.generate(lively, CHATS[:2], params) for c in r]
    tokens = {(s.prompt, s.sample): s.out for s in seqs}
    eog = tokens[(0, 0)][3]  # call the 4th token of the first sample an end of generation
    real = llama_cpp.llama_vocab_is_eog
    monkeypatch.setattr(llama_cpp, "llama_vocab_is_eog", lambda vocab, tok: tok == eog or real(vocab, tok))
    ended = [c for r in llamacpp.generate(lively, CHATS[:2], params) for c in r]
    for (key, out), a, b in zip(sorted(tokens.items()), full, ended):
        assert a.text.startswith(b.text)
        if eog in out:
            assert (b.finish_reason, b.completion_tokens) == ("stop", out.index(eog))
        else:
            assert (b.text, b.finish_reason, b.completion_tokens) == (a.text, a.finish_reason, a.completion_tokens)
    assert ended[0].completion_tokens <= 3 and sum(eog not in out for out in tokens.values()) >= 1


def test_full_context_stops_like_one_at_a_time(llamacpp, lively):
    loaded = llamacpp.load(lively.target)
    per_word = len(llamacpp.prompt_tokens(loaded, Chat.from_user("word " * 11))) - \
        len(llamacpp.prompt_tokens(loaded, Chat.from_user("word " * 10)))
    base = len(llamacpp.prompt_tokens(loaded, Chat.from_user("word " * 10))) - 10 * per_word
    chat = Chat.from_user("word " * ((loaded.n_ctx - base - 20) // per_word))
    room = loaded.n_ctx - len(llamacpp.prompt_tokens(loaded, chat))
    assert 0 < room < 30
    params = SamplingParams(n=2, temperature=0, max_tokens=40)
    alone = llamacpp.generate(lively, [chat], params, batched=False)[0]
    batched = llamacpp.generate(lively, [chat], params, batched=True)[0]
    assert [(c.completion_tokens, c.finish_reason) for c in alone] == [(c.completion_tokens, c.finish_reason)
                                                                       for c in batched]
    assert all(c.completion_tokens <= room for c in batched)
    assert texts([batched]) == texts([alone])


def test_shared_prompt_prefix_is_decoded_once_per_round(llamacpp, lively, monkeypatch):
    from plumb.llamacpp import batch as llamacpp_batch

    preamble = "You judge answers against these principles: be brief, be kind, be right. " * 4
    chats = [Chat.from_user(preamble + f"Answer {i}: {a}") for i, a in enumerate(["yes.", "no.", "maybe so."])]
    loaded = llamacpp.load(lively.target)
    prompt_len = sum(len(llamacpp.prompt_tokens(loaded, c)) for c in chats)
    decoded = []
    original = llamacpp_batch.BatchContext.decode
    monkeypatch.setattr(llamacpp_batch.BatchContext, "decode",
                        lambda self, entries: (decoded.append(len(entries)), original(self, entries))[1])
    params = SamplingParams(n=2, temperature=0, max_tokens=6)
    batched = llamacpp.generate(lively, chats, params, batched=True)
    assert sum(decoded[:3]) < prompt_len / 2  # the preamble once, then each prompt's own suffix
    assert texts(batched) == texts(llamacpp.generate(lively, chats, params, batched=False))


def test_routing_greedy_and_single_sequences_stay_one_at_a_time(llamacpp, lively, monkeypatch):
    from plumb.llamacpp import batch as llamacpp_batch

    calls = []
    original = llamacpp_batch.sample_batched
    monkeypatch.setattr(llamacpp_batch, "sample_batched", lambda *a: (calls.append(a[2]), original(*a))[1])
    llamacpp.generate(lively, CHATS, SamplingParams(n=2, temperature=0, max_tokens=3))
    llamacpp.generate(lively, CHATS[:1], SamplingParams(n=1, temperature=1.0, max_tokens=3))
    assert calls == []
    llamacpp.generate(lively, CHATS[:1], SamplingParams(n=2, temperature=1.0, max_tokens=3))
    llamacpp.generate(lively, CHATS, SamplingParams(n=1, temperature=1.0, max_tokens=3))
    llamacpp.generate(lively, CHATS, SamplingParams(n=2, temperature=1.0, max_tokens=3, logprobs=2))
    assert len(calls) == 3


def test_batched_log_probs_are_the_one_sequence_paths(llamacpp, lively):
    """Greedy decoding forced through the batch: the same tokens, and for each the same top-k log-probs, its own
    log-prob and id as one sequence at a time computes them (within 0.02: the f16 model's kernels differ by batch
    shape; measured up to 0.006)."""
    params = SamplingParams(n=1, temperature=0, max_tokens=6, logprobs=3)
    one = llamacpp.generate(lively, CHATS, params, batched=False)
    many = llamacpp.generate(lively, CHATS, params, batched=True)
    for (a,), (b,) in zip(one, many):
        assert a.text == b.text and a.token_ids == b.token_ids and len(b.token_ids) == b.completion_tokens
        assert b.token_logprobs == pytest.approx(a.token_logprobs, abs=0.02)
        assert len(b.top_logprobs) == len(a.top_logprobs)
        for x, y in zip(a.top_logprobs, b.top_logprobs):
            assert list(x) == list(y) and list(y.values()) == pytest.approx(list(x.values()), abs=0.02)
        # greedy: each sampled token is the likeliest; the top entry sums the tokens sharing its text, so it is no less
        assert all(lp <= max(top.values()) + 1e-6 for lp, top in zip(b.token_logprobs, b.top_logprobs))
