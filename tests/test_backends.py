"""Generation backends: llama.cpp in-process, transformers, OpenAI-compatible HTTP, Anthropic; `plumb generate`."""

from __future__ import annotations

import json
import math
import threading
import time
from http.server import ThreadingHTTPServer

import pytest

from plumb.core.errors import PlumbError
from plumb.core.records import Chat, ModelSpec, SamplingParams
from tests.local_servers import JSONHandler, free_port, running, start_llama_server

CHATS = [Chat.from_user("Why is the sky blue?"), Chat.from_user("Tell me a story", system="Be brief.")]


# -- llama.cpp in-process --------------------------------------------------------------


@pytest.fixture
def llamacpp():
    from plumb import llamacpp

    return llamacpp


def test_llamacpp_n_samples_seed_and_params(llamacpp, tiny_gguf):
    spec = ModelSpec("llamacpp", str(tiny_gguf))
    params = SamplingParams(n=3, temperature=1.5, top_p=1.0, max_tokens=12, seed=7)
    first = llamacpp.generate(spec, CHATS, params)
    again = llamacpp.generate(spec, CHATS, params)
    assert [len(r) for r in first] == [3, 3]
    assert [[c.text for c in r] for r in first] == [[c.text for c in r] for r in again]  # seeded
    c = first[0][0]
    assert c.backend == "llamacpp" and c.model == str(spec) and c.params["seed"] == 7
    assert 0 < c.completion_tokens <= 12 and c.prompt_tokens > 5


def test_llamacpp_stop_and_max_tokens(llamacpp, tiny_gguf):
    spec = ModelSpec("llamacpp", str(tiny_gguf))
    full = llamacpp.generate(spec, CHATS[:1], SamplingParams(temperature=0, max_tokens=5))[0][0]
    assert full.completion_tokens == 5 and full.finish_reason == "length"
    stop = full.text[2:3]  # the tiny model answers with newlines; stop at the third character
    cut = llamacpp.generate(spec, CHATS[:1], SamplingParams(temperature=0, max_tokens=5, stop=(stop,)))[0][0]
    assert cut.text == full.text[: full.text.index(stop)] and cut.finish_reason == "stop"


def test_llamacpp_top_logprobs(llamacpp, tiny_gguf):
    spec = ModelSpec("llamacpp", str(tiny_gguf))
    c = llamacpp.generate(spec, CHATS[:1], SamplingParams(temperature=0, max_tokens=3, logprobs=5))[0][0]
    assert len(c.top_logprobs) == 3
    for step in c.top_logprobs:
        assert 1 <= len(step) <= 5 and all(v <= 0 for v in step.values())
        assert sum(math.exp(v) for v in step.values()) <= 1.0001
    assert max(c.top_logprobs[0], key=c.top_logprobs[0].get) == c.text[0]  # greedy picked the top token


def test_llamacpp_reuses_shared_prefix(llamacpp, tiny_gguf):
    spec = ModelSpec("llamacpp", str(tiny_gguf))
    loaded = llamacpp.load(str(tiny_gguf))
    evaluated = []
    original = loaded.llm.eval
    loaded.llm.eval = lambda tokens: (evaluated.append(len(tokens)), original(tokens))[1]
    try:
        preamble = "You judge answers against these principles: be brief, be kind, be right. " * 4
        params = SamplingParams(temperature=0, max_tokens=1)
        llamacpp.generate(spec, [Chat.from_user(preamble + "Answer A: yes.")], params)
        cold = evaluated[0]
        evaluated.clear()
        llamacpp.generate(spec, [Chat.from_user(preamble + "Answer B: no.")], params)
        assert evaluated[0] < cold / 4, (evaluated, cold)  # only the new suffix was evaluated
        assert llamacpp.load(str(tiny_gguf)) is loaded  # one model per process
    finally:
        loaded.llm.eval = original


def test_llamacpp_base_and_tuned_from_one_model(llamacpp, tiny_gguf, tiny_model_dir, tmp_path):
    from plumb.export import export_lora
    from tests.tiny import random_lora

    random_lora(tiny_model_dir, tmp_path / "a", ["q_proj", "v_proj", "down_proj"], r=4, std=1.0, seed=0, only_b=False)
    adapter = export_lora(tmp_path / "a", tmp_path / "a.gguf", base_dir=tiny_model_dir)

    params = SamplingParams(temperature=0, max_tokens=6, logprobs=1)
    base = llamacpp.generate(ModelSpec("llamacpp", str(tiny_gguf)), CHATS[:1], params)[0][0]
    tuned = llamacpp.generate(ModelSpec("llamacpp", str(tiny_gguf), str(adapter), 1.0), CHATS[:1], params)[0][0]
    zero = llamacpp.generate(ModelSpec("llamacpp", str(tiny_gguf), str(adapter), 0.0), CHATS[:1], params)[0][0]
    assert tuned.top_logprobs != base.top_logprobs
    assert zero.text == base.text and zero.top_logprobs[0] == pytest.approx(base.top_logprobs[0], abs=1e-4)
    assert len([k for k in llamacpp.model._LOADED if k[0] == str(tiny_gguf.resolve())]) == 1  # never reloaded


def test_llamacpp_prompt_longer_than_context(llamacpp, tiny_gguf):
    spec = ModelSpec("llamacpp", str(tiny_gguf))
    with pytest.raises(PlumbError, match=r"is \d+ tokens but llamacpp:.*context of 512 tokens"):
        llamacpp.generate(spec, [Chat.from_user("word " * 600)], SamplingParams(max_tokens=4))


def test_llamacpp_missing_file(llamacpp, tmp_path):
    with pytest.raises(PlumbError, match="no GGUF model"):
        llamacpp.generate(ModelSpec("llamacpp", str(tmp_path / "nope.gguf")), CHATS, SamplingParams())


# -- transformers ---------------------------------------------------------------------------


def test_hf_batched_left_padding_matches_one_by_one(tiny_model_dir):
    from plumb.train import generate as hf_generate

    model, tok = hf_generate.load(str(tiny_model_dir))
    chats = [Chat.from_user("hi"), Chat.from_user("a much longer prompt about rivers and 12 cats and dogs")]
    params = SamplingParams(temperature=0, max_tokens=8, logprobs=2)
    batched = hf_generate.generate_with(model, tok, chats, params)
    alone = [hf_generate.generate_with(model, tok, [c], params)[0] for c in chats]
    assert [r[0].text for r in batched] == [r[0].text for r in alone]
    assert batched[1][0].top_logprobs[0] == pytest.approx(alone[1][0].top_logprobs[0], abs=1e-4)
    sampled = hf_generate.sample_batch(model, tok, chats, SamplingParams(n=2, temperature=1.0, max_tokens=4, seed=1))
    assert len(sampled.completion_ids) == 4 and sampled.prompt_ids[0] == sampled.prompt_ids[1]


# -- OpenAI-compatible HTTP against a real llama_cpp.server ------------------------------------


@pytest.fixture(scope="module")
def llama_server(tiny_gguf, tmp_path_factory):
    pytest.importorskip("uvicorn")
    log_path = tmp_path_factory.mktemp("llama-server") / "server.log"
    with running([start_llama_server(tiny_gguf, log_path)]) as [(_, url)]:
        yield url


def test_openai_http_against_llama_cpp_server(llama_server):
    from plumb.plugins import openai_http

    spec = ModelSpec("openai", llama_server)
    out = openai_http.OpenAIHTTP().generate(spec, CHATS, SamplingParams(n=2, max_tokens=4, seed=3, logprobs=2))
    assert [len(r) for r in out] == [2, 2]
    c = out[0][0]
    assert c.backend == "openai" and c.completion_tokens == 4 and c.prompt_tokens > 5
    assert c.top_logprobs and all(v <= 0 for v in c.top_logprobs[0].values())


def test_openai_http_server_down():
    from plumb.plugins import openai_http

    spec = ModelSpec("openai", f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(PlumbError, match="cannot reach the OpenAI-compatible server"):
        openai_http.OpenAIHTTP().generate(spec, CHATS, SamplingParams())


# -- Anthropic against a local Messages API ------------------------------------------------------

KEY = "sk-ant-test-SECRET-0123456789"


class FakeAnthropic(JSONHandler):
    """Speaks POST /v1/messages. A user message containing OVERLOAD gets one 529 first; FAIL gets 400;
    MALFORMED gets a 200 that is not a message."""

    calls: list[dict] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        text = body["messages"][-1]["content"]
        FakeAnthropic.calls.append({"body": body, "headers": " ".join(self.headers.values())})
        if "OVERLOAD" in text and sum("OVERLOAD" in c["body"]["messages"][-1]["content"] for c in self.calls) == 1:
            return self.reply(529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
                              {"retry-after-ms": "10"})
        if "FAIL" in text:
            return self.reply(400, {"type": "error", "error": {"type": "invalid_request_error",
                                                              "message": "prompt rejected"}})
        if "SLOW" in text:
            time.sleep(1.0)
        if "MALFORMED" in text:
            return self.reply(200, {"unexpected": True})
        self.reply(200, {"id": "msg_1", "type": "message", "role": "assistant", "model": body["model"],
                         "content": [{"type": "text", "text": f"echo: {text}"}], "stop_reason": "end_turn",
                         "stop_sequence": None, "usage": {"input_tokens": 7, "output_tokens": 3}})


@pytest.fixture
def anthropic_server(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeAnthropic)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FakeAnthropic.calls = []
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("PLUMB_ANTHROPIC_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}")
    yield FakeAnthropic
    server.shutdown()


def test_anthropic_generates_and_retries_overloaded(anthropic_server):
    from plumb.plugins import anthropic_api

    spec = ModelSpec("anthropic", "claude-test")
    out = anthropic_api.Anthropic().generate(spec, [Chat.from_user("OVERLOAD then fine", system="Be brief.")],
                                            SamplingParams(n=2, max_tokens=9, stop=("END",)))
    assert [c.text for c in out[0]] == ["echo: OVERLOAD then fine"] * 2
    assert out[0][0].prompt_tokens == 7 and out[0][0].completion_tokens == 3
    assert len(anthropic_server.calls) == 3  # 529, retry, second sample
    sent = anthropic_server.calls[-1]
    assert KEY in sent["headers"] and sent["body"]["system"] == "Be brief." and sent["body"]["stop_sequences"] == ["END"]
    assert all(m["role"] != "system" for m in sent["body"]["messages"])


def test_anthropic_malformed_and_errors_never_show_the_key(anthropic_server):
    from plumb.plugins import anthropic_api

    spec = ModelSpec("anthropic", "claude-test")
    for prompt, message in (("MALFORMED", "malformed response"), ("FAIL", "HTTP 400.*prompt rejected")):
        with pytest.raises(PlumbError, match=message) as info:
            anthropic_api.Anthropic().generate(spec, [Chat.from_user(prompt)], SamplingParams())
        assert KEY not in str(info.value)


def test_anthropic_timeout_is_a_clear_error(anthropic_server, monkeypatch):
    from plumb.plugins import anthropic_api

    monkeypatch.setenv("PLUMB_ANTHROPIC_TIMEOUT", "0.2")
    monkeypatch.setenv("PLUMB_ANTHROPIC_RETRIES", "0")
    with pytest.raises(PlumbError, match="did not answer .* in time"):
        anthropic_api.Anthropic().generate(ModelSpec("anthropic", "x"), [Chat.from_user("SLOW")], SamplingParams())


def test_anthropic_needs_the_env_key(monkeypatch):
    from plumb.plugins import anthropic_api

    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(PlumbError, match="ANTHROPIC_API_KEY"):
        anthropic_api.Anthropic().generate(ModelSpec("anthropic", "x"), CHATS, SamplingParams())


# -- plumb generate -------------------------------------------------------------------------------


def test_generate_command_stores_provenance_and_reports_failures(runner, workspace, anthropic_server):
    from plumb.cli import cli

    result = runner.invoke(cli, ["generate", "--model", "anthropic:claude-test", "--n", "2", "--temperature", "0.5",
                                 "--seed", "3", "--json", "first prompt", "please FAIL here", "third prompt"])
    assert result.exit_code == 1
    assert "1 of 3 prompts failed" in result.output and "please FAIL here" in result.output
    assert KEY not in result.output
    store = workspace.store()
    rows = store.db.execute("SELECT s.*, p.text AS prompt FROM samples s JOIN prompts p ON p.id = s.prompt_id").fetchall()
    assert sorted({r["prompt"] for r in rows}) == ["first prompt", "third prompt"] and len(rows) == 4
    r = rows[0]
    assert r["model"] == "anthropic:claude-test" and r["backend"] == "anthropic"
    assert r["plugin"] == "plumb.plugins.anthropic_api" and r["plugin_version"]
    assert json.loads(r["params"])["temperature"] == 0.5 and json.loads(r["params"])["n"] == 2
    assert r["constitution_hash"] == workspace.constitution().hash
    store.close()


def test_generate_command_uses_workspace_prompts(runner, workspace, tiny_gguf):
    from plumb.cli import cli

    store = workspace.store()
    store.add_prompt([{"role": "user", "content": "stored prompt"}])
    store.close()
    result = runner.invoke(cli, ["generate", "--model", f"llamacpp:{tiny_gguf}", "--max-tokens", "3", "--json"])
    assert result.exit_code == 0, result.output
    samples = json.loads(result.output)["samples"]
    assert len(samples) == 1 and samples[0]["prompt_id"] == 1
