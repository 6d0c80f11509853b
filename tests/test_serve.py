"""`plumb serve` and adapters on servers: real `plumb serve` processes on 127.0.0.1, spoken to by the openai
backend's pool with vLLM's runtime LoRA API. The adapter the server applies must give what llama.cpp gives
in-process with the same adapter exported to GGUF; a restarted server, one that never had the adapter and
one with too many are handled; bad adapters are refused with the reason."""

from __future__ import annotations

import json
import shutil
import urllib.request

import pytest

from plumb.core.errors import PlumbError
from plumb.core.records import Chat, ModelSpec, SamplingParams
from tests.local_servers import port_of, start_plumb_server, wait_up

CHATS = [Chat.from_user(f"Tell me about the number {i}.") for i in range(4)]
SEEDED = SamplingParams(n=2, temperature=1.0, max_tokens=8, seed=7)  # seeded: the same draws on the same logits


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory):
    """A strong random peft LoRA on the tiny model: its samples vary by token, unlike the bare model's newlines."""
    from tests.tiny import random_lora

    out = tmp_path_factory.mktemp("adapter") / "lora"
    random_lora(tiny_model_dir, out, ["q_proj", "v_proj", "down_proj"], r=4, std=1.0, seed=0, only_b=False)
    return out


@pytest.fixture(scope="module")
def server(tiny_gguf, tiny_model_dir, tmp_path_factory):
    """One `plumb serve` on the tiny GGUF; ``restart()`` kills it and starts a new one on the same port."""
    logs = tmp_path_factory.mktemp("plumb-serve")
    state = {}

    def start(port=None):
        proc, base = start_plumb_server(tiny_gguf, logs / "server.log", tiny_model_dir, port)
        wait_up(proc, base, logs / "server.log", 60)
        state.update(proc=proc, base=base)

    def restart():
        state["proc"].kill()
        state["proc"].wait(10)
        start(port_of(state["base"]))

    start()
    state["restart"] = restart
    try:
        yield state
    finally:
        state["proc"].kill()
        state["proc"].wait(10)


def listed(base: str) -> dict[str, str]:
    with urllib.request.urlopen(base + "/models", timeout=5) as r:
        return {m["id"]: m.get("root", "") for m in json.load(r)["data"]}


def texts(got) -> list[str]:
    return [c.text for r in got for c in r]


def test_an_adapter_loaded_at_run_time_answers_as_llama_cpp_in_process(server, adapter, tiny_gguf, tmp_path):
    from plumb.export.lora_to_gguf import export_lora
    from plumb.llamacpp import generate as local
    from plumb.serving import openai_chat

    base = openai_chat.generate(ModelSpec("openai", server["base"]), CHATS, SEEDED)
    tuned = openai_chat.generate(ModelSpec("openai", server["base"], lora=str(adapter)), CHATS, SEEDED)
    gguf = export_lora(adapter, tmp_path / "lora.gguf")
    for spec, got in ((ModelSpec("llamacpp", str(tiny_gguf), lora=str(gguf)), tuned),
                      (ModelSpec("llamacpp", str(tiny_gguf)), base)):  # a request per chat, as the pool sends them
        assert texts(got) == [t for chat in CHATS for t in texts(local(spec, [chat], SEEDED))]
    assert texts(tuned) != texts(base)
    names = [n for n in listed(server["base"]) if n.startswith("plumb-")]
    assert len(names) == 1 and listed(server["base"])[names[0]] == str(adapter.resolve())
    # at another scale a copy beside it with scaled B matrices is loaded: at 1e-6, the base's answers
    tiny = openai_chat.generate(ModelSpec("openai", server["base"], lora=str(adapter), lora_scale=1e-6), CHATS, SEEDED)
    assert texts(tiny) == texts(base) and (adapter.parent / "lora-x1e-06" / "adapter_model.safetensors").is_file()


def test_sampled_tokens_carry_their_log_probs_and_ids(server, adapter, tiny_gguf, tmp_path):
    """Asked for log-probs and token ids (vLLM's return_tokens_as_token_ids), the server gives what llama.cpp
    gives in process for the same seeded draws: the same ids, each with its own log-prob."""
    from plumb.export.lora_to_gguf import export_lora
    from plumb.llamacpp import generate as local
    from plumb.serving import openai_chat

    params = SamplingParams(n=2, temperature=1.0, max_tokens=8, seed=3, logprobs=1)
    got = openai_chat.generate(ModelSpec("openai", server["base"], lora=str(adapter)), CHATS[:2], params,
                               token_ids=True)
    gguf = export_lora(adapter, tmp_path / "lora.gguf")
    here = [local(ModelSpec("llamacpp", str(tiny_gguf), lora=str(gguf)), [chat], params)[0] for chat in CHATS[:2]]
    for c, h in zip((c for r in got for c in r), (h for r in here for h in r)):
        assert c.token_ids == h.token_ids and len(c.token_ids) == c.completion_tokens > 0
        assert c.token_logprobs == pytest.approx(h.token_logprobs, abs=1e-4) and max(c.token_logprobs) <= 1e-6
    plain = openai_chat.generate(ModelSpec("openai", server["base"]), CHATS[:1], params)  # ids not asked: none
    assert plain[0][0].token_ids is None and plain[0][0].token_logprobs


def test_a_restarted_server_is_given_the_adapter_again(server, adapter):
    from plumb.serving import openai_chat

    spec = ModelSpec("openai", server["base"], lora=str(adapter))
    before = texts(openai_chat.generate(spec, CHATS[:2], SEEDED))
    server["restart"]()  # between two requests: the pool never saw it down, and asks for a name it lost
    assert not [n for n in listed(server["base"]) if n.startswith("plumb-")]
    assert texts(openai_chat.generate(spec, CHATS[:2], SEEDED)) == before  # 404, loaded again, answered
    assert [n for n in listed(server["base"]) if n.startswith("plumb-")]


def test_a_server_keeps_at_most_four_of_plumbs_adapters(server, adapter, tmp_path):
    from plumb.serving import openai_chat
    from plumb.serving.pool import MAX_ADAPTERS

    for i in range(MAX_ADAPTERS + 2):
        copy = shutil.copytree(adapter, tmp_path / f"a{i}")
        openai_chat.generate(ModelSpec("openai", server["base"], lora=str(copy)), CHATS[:1], SEEDED)
    roots = [root for name, root in listed(server["base"]).items() if name.startswith("plumb-")]
    assert len(roots) == MAX_ADAPTERS and str(tmp_path / f"a{MAX_ADAPTERS + 1}") in roots
    assert str(tmp_path / "a0") not in roots  # the one used longest ago went first


def test_bad_adapters_and_names_are_refused_with_the_reason(server, adapter, tmp_path):
    from plumb.serving import openai_chat

    with pytest.raises(PlumbError, match="not a peft adapter directory"):
        openai_chat.generate(ModelSpec("openai", server["base"], lora=str(tmp_path)), CHATS[:1], SEEDED)
    junk = tmp_path / "junk"
    shutil.copytree(adapter, junk)
    (junk / "adapter_config.json").write_text("{}")
    with pytest.raises(PlumbError, match="could not load the LoRA adapter .*cannot convert"):
        openai_chat.generate(ModelSpec("openai", server["base"], lora=str(junk)), CHATS[:1], SEEDED)
    with pytest.raises(PlumbError, match="HTTP 404.*does not exist"):
        openai_chat.generate(ModelSpec("openai", server["base"] + "#no-such-model"), CHATS[:1], SEEDED)
