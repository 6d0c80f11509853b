"""Server pools for the ``openai:`` backend (plumb.serving): retries and backoff against local HTTP servers
that answer 429/503 or die, the sample stage's stop-and-resume when every server is down, and pools of two
real llama_cpp.server processes (results in input order, one server killed mid-run, option log-probs)."""

from __future__ import annotations

import json
import threading
import time
from http.server import ThreadingHTTPServer

import pytest

from plumb.core.errors import BackendUnavailable, PlumbError
from plumb.core.records import Chat, ModelSpec, SamplingParams
from plumb.serving.pool import Pool, ServerWarning, retry_after
from tests.local_servers import JSONHandler, free_port, running, start_llama_server


class Fake(JSONHandler):
    """An OpenAI-compatible chat server. ``script`` is a list of statuses to answer first (then 200s, which
    echo the last user message); a status given as (code, headers) sends those headers. Once ``budget`` is 0 it
    drops the connection of the request and stops listening (a server that died)."""

    def do_GET(self):
        self.reply(200, {"data": [{"id": "fake"}]})

    def do_POST(self):
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        with srv.lock:
            srv.times.append(time.monotonic())
            if srv.budget == 0:
                threading.Thread(target=lambda: (srv.shutdown(), srv.server_close(), srv.closed.set()),
                                 daemon=True).start()
                self.close_connection = True
                return
            srv.budget -= 1
            step = srv.script.pop(0) if srv.script else 200
        code, headers = step if isinstance(step, tuple) else (step, {})
        if code != 200:
            return self.reply(code, {"error": {"message": f"status {code}"}}, headers)
        srv.answered.append(body["messages"][-1]["content"])
        self.reply(200, {"choices": [{"message": {"role": "assistant", "content": "re: " + srv.answered[-1]},
                                      "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 3, "completion_tokens": 2}})


def serve(port: int = 0, script=(), budget: int = -1) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", port), Fake)
    server.lock, server.script, server.budget = threading.Lock(), list(script), budget
    server.times, server.answered, server.closed = [], [], threading.Event()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def url(server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/v1"


@pytest.fixture
def servers():
    started = []
    yield lambda **kw: started.append(serve(**kw)) or started[-1]
    for s in started:
        s.shutdown()
        s.server_close()


def ask(pool: Pool):
    return lambda text: pool.post("/chat/completions", {"messages": [{"role": "user", "content": text}]})[
        "choices"][0]["message"]["content"]


def test_busy_answers_wait_for_retry_after_then_back_off(servers):
    s = servers(script=[(429, {"Retry-After": "0.4"}), 503, 503])
    pool = Pool([url(s)], backoff_s=0.1)
    assert pool.map(ask(pool), ["hi"]) == ["re: hi"]
    gaps = [b - a for a, b in zip(s.times, s.times[1:])]
    assert len(gaps) == 3
    assert gaps[0] >= 0.4 and 0.1 <= gaps[1] < 0.4 and gaps[2] >= 0.2  # Retry-After, then 0.1 s doubling


def test_busy_answers_past_the_retries_are_an_error(servers):
    s = servers(script=[503] * 3)
    pool = Pool([url(s)], retries=2, backoff_s=0.01)
    with pytest.raises(PlumbError, match="HTTP 503.*3 tries"):
        pool.map(ask(pool), ["hi"])
    assert len(s.times) == 3


def test_a_client_error_is_not_retried(servers):
    s = servers(script=[400])
    pool = Pool([url(s)])
    with pytest.raises(PlumbError, match="HTTP 400"):
        pool.map(ask(pool), ["hi"])
    assert len(s.times) == 1


def test_retry_after_as_seconds_or_http_date():
    assert retry_after("2") == 2.0 and retry_after(None) is None and retry_after("soon") is None
    assert 8 < retry_after(time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 10))) <= 10


def test_requests_spread_over_servers_and_come_back_in_order(servers):
    a, b = servers(), servers()
    pool = Pool([url(a), url(b)], per_server=2)
    texts = [f"prompt {i}" for i in range(20)]
    assert pool.map(ask(pool), texts) == [f"re: {t}" for t in texts]
    assert len(a.answered) + len(b.answered) == 20 and a.answered and b.answered


def test_an_unreachable_server_is_skipped_named_and_counted(servers):
    good, dead = servers(), f"http://127.0.0.1:{free_port()}/v1"
    pool = Pool([dead, url(good)], per_server=2, cooldown_s=60)
    texts = [f"p{i}" for i in range(8)]
    with pytest.warns(ServerWarning, match=rf"{dead} is unreachable .*: skipped, [12] request\(s\) moved"):
        assert pool.map(ask(pool), texts) == [f"re: {t}" for t in texts]
    assert sorted(good.answered) == sorted(texts)


def test_a_server_comes_back_after_its_cool_down(servers):
    port = free_port()
    pool = Pool([f"http://127.0.0.1:{port}/v1"], cooldown_s=0.2)
    late = threading.Timer(0.3, lambda: servers(port=port))  # starts listening while the pool cools down
    late.start()
    with pytest.warns(ServerWarning, match="unreachable"):
        assert pool.map(ask(pool), ["hi", "there"]) == ["re: hi", "re: there"]
    late.join()


def test_all_servers_down_stops_with_what_finished(servers):
    a, b = servers(budget=2), servers(budget=1)
    pool = Pool([url(a), url(b)], per_server=1, cooldown_s=0.05)
    with pytest.raises(BackendUnavailable, match=r"cannot reach the OpenAI-compatible servers: .*\(.*failures") as e:
        pool.map(ask(pool), [f"p{i}" for i in range(6)])
    finished = e.value.finished
    assert len(finished) == 6 and sum(r is not None for r in finished) == 3
    assert [r for r in finished if r] == [f"re: p{i}" for i, r in enumerate(finished) if r]  # in place


def test_sample_stage_keeps_what_finished_and_a_rerun_tops_up(servers, workspace):
    from plumb.pipeline.sample import SampleOptions, sample
    from plumb.pipeline.session import open_session

    port = free_port()
    s = servers(port=port, budget=5)
    session = open_session()
    ids = [session.store.add_prompt([{"role": "user", "content": f"q{i}"}], source="test") for i in range(12)]
    opts = SampleOptions(model=f"openai:{url(s)}", prompt_ids=ids, params=SamplingParams(max_tokens=4))
    with pytest.raises(PlumbError, match=r"cannot reach .* Stopped: 5 samples of this run are stored"):
        sample(session, opts)
    assert s.closed.wait(5)
    again = servers(port=port)
    out = sample(session, opts)  # the same process: its pool probes the server again
    assert out.reused == 5 and len(out.stored) == 7 and len(again.answered) == 7
    assert sorted(s.answered + again.answered) == sorted(f"q{i}" for i in range(12))


# -- pools of real llama_cpp.server processes ------------------------------------------------------


@pytest.fixture(scope="module")
def two_llama_servers(tiny_gguf, tmp_path_factory):
    """Two servers for the module's tests; the last test kills the second one."""
    pytest.importorskip("uvicorn")
    logs = tmp_path_factory.mktemp("llama-servers")
    with running([start_llama_server(tiny_gguf, logs / f"server{i}.log", "--n_threads", "1") for i in range(2)],
                 90) as procs:
        yield procs


CHATS = [Chat.from_user(f"Tell me about the number {i}.") for i in range(12)]


def test_option_logprobs_from_a_pool_of_llama_servers(two_llama_servers):
    from plumb.core.context import HookContext
    from plumb.core.plugins import get_plugin_manager

    (_, a), (_, b) = two_llama_servers
    spec = ModelSpec("openai", f"{a},{b}")
    ctx = HookContext(get_plugin_manager(entry_points=False))
    greedy = [r[0].text for r in ctx.generate(spec, CHATS[:4], SamplingParams(temperature=0.0, max_tokens=1))]
    options = ["A", "B", "tie"]
    scored = ctx.option_logprobs(spec, CHATS[:4], options + greedy)
    assert len(scored) == 4
    for row, first in zip(scored, greedy):
        assert set(row) == set(options + greedy) and all(v <= 1e-6 for v in row.values())
        assert row[first] == max(row.values())  # what the server answers is the likeliest option


def test_two_llama_servers_answer_faster_than_one(two_llama_servers):
    """The same 16 requests through one server and through the pool of two (one llama.cpp thread each, on a
    machine with at least two cores): best of three runs each, the pool's wall time is lower."""
    import time

    from plumb.serving import openai_chat

    (_, a), (_, b) = two_llama_servers
    chats = [Chat.from_user(f"Count the {i} things again.") for i in range(16)]
    params = SamplingParams(n=1, temperature=0.0, max_tokens=96, seed=1)

    def best(target: str) -> tuple[float, list[str]]:
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            got = openai_chat.generate(ModelSpec("openai", target), chats, params)
            times.append(time.perf_counter() - t0)
        return min(times), [c.text for r in got for c in r]

    best(f"{a},{b}")  # warm both
    one, alone = best(a)
    two, pooled = best(f"{a},{b}")
    assert pooled == alone
    assert two < one, f"one server {one:.2f} s, two {two:.2f} s"


def test_a_pool_of_two_llama_servers_loses_nothing_when_one_is_killed(two_llama_servers):  # last: it kills one
    from plumb.serving import openai_chat

    (_, a), (b_proc, b) = two_llama_servers
    params = SamplingParams(n=1, temperature=0.0, max_tokens=16, seed=1)
    alone = openai_chat.generate(ModelSpec("openai", a), CHATS, params)  # the reference, from one server
    pool, name = openai_chat.pool_of(ModelSpec("openai", f"{a},{b}"))
    spec = ModelSpec("openai", f"{a},{b}")
    done = []

    def kill_b_after_four(chat):  # B dies mid-run, with requests in flight or queued on it
        out = openai_chat.complete_chat(pool, name, spec, chat, params)
        done.append(chat)
        if len(done) == 4:
            b_proc.kill()
        return out

    with pytest.warns(ServerWarning, match=rf"{b} is unreachable .*request\(s\) moved to the other servers"):
        got = pool.map(kill_b_after_four, CHATS)
    assert b_proc.poll() is not None
    assert [[c.text for c in r] for r in got] == [[c.text for c in r] for r in alone]
    assert all(r[0].completion_tokens > 0 for r in got)
