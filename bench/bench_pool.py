"""Sampling throughput of the ``openai:`` backend from one llama_cpp.server vs a pool of two.

    python bench/bench_pool.py                          # the starter GGUF, 16 prompts, 48 tokens each
    python bench/bench_pool.py --gguf M.gguf --prompts 32 --max-tokens 64 --threads 1

Starts two ``python -m llama_cpp.server`` processes on 127.0.0.1 (``--threads`` each), warms both, then
samples the same prompts (greedy, one answer each) through ``openai:URL`` and through
``openai:URL,URL``, and prints completion tokens per second of wall time for each and their ratio. The
two runs must give the same answers in the same order; the bench says so. On a machine with as many
free cores as the servers' threads together, the ratio is the pool's speed-up.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from plumb.core.records import Chat, ModelSpec, SamplingParams
from plumb.serving import openai_chat

TOPICS = ["rivers", "bread", "bicycles", "tides", "owls", "glass", "chess", "volcanoes", "paper", "bees",
          "clocks", "salt", "bridges", "comets", "wool", "maps"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(gguf: str, threads: int, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--host", "127.0.0.1",
                                 "--port", str(port), "--n_ctx", "1024", "--n_threads", str(threads)],
                                stdout=f, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(base + "/models", timeout=1)
            return proc, base
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"llama_cpp.server did not start: {log.read_text(errors='replace')[-500:]}")
            time.sleep(0.3)


def timed(spec: str, chats: list[Chat], params: SamplingParams) -> tuple[float, int, list[str]]:
    t0 = time.perf_counter()
    out = openai_chat.generate(ModelSpec("openai", spec), chats, params)
    seconds = time.perf_counter() - t0
    return seconds, sum(r[0].completion_tokens for r in out), [r[0].text for r in out]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", help="model file (default: the starter GGUF)")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1, help="threads per server")
    args = ap.parse_args()
    if args.gguf is None:
        from plumb.models import starter

        args.gguf = str(starter.ensure("generate"))
    chats = [Chat.from_user(f"Write three sentences about {TOPICS[i % len(TOPICS)]} (#{i}).")
             for i in range(args.prompts)]
    params = SamplingParams(n=1, temperature=0.0, max_tokens=args.max_tokens, seed=0)
    logs = Path(tempfile.mkdtemp(prefix="bench-pool-"))
    servers = [start(args.gguf, args.threads, logs / f"server{i}.log") for i in range(2)]
    try:
        (_, a), (_, b) = servers
        for base in (a, b):  # warm-up: load pages, first-request costs
            timed(base, chats[:2], SamplingParams(n=1, temperature=0.0, max_tokens=4))
        one_s, one_tok, one_texts = timed(a, chats, params)
        two_s, two_tok, two_texts = timed(f"{a},{b}", chats, params)
    finally:
        for proc, _ in servers:
            proc.terminate()
            proc.wait(10)
    print(f"model {Path(args.gguf).name}, {args.prompts} prompts x {args.max_tokens} tokens, "
          f"{args.threads} thread(s) per server")
    print(f"one server : {one_tok} tokens in {one_s:.2f} s = {one_tok / one_s:.1f} tok/s")
    print(f"two servers: {two_tok} tokens in {two_s:.2f} s = {two_tok / two_s:.1f} tok/s")
    print(f"speed-up {one_s / two_s:.2f}x; same answers in the same order: {one_texts == two_texts}")


if __name__ == "__main__":
    main()
