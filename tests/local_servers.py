"""Local servers the tests talk to over real sockets on 127.0.0.1: a free port, a JSON reply for fake
HTTP APIs, and ``python -m llama_cpp.server`` or ``plumb serve`` started on a GGUF and waited for."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from http.server import BaseHTTPRequestHandler

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JSONHandler(BaseHTTPRequestHandler):
    """A fake HTTP API's handler: quiet, and ``reply`` sends a JSON body with optional extra headers."""

    def log_message(self, *args):  # keep test output clean
        pass

    def reply(self, status: int, body: dict, headers: dict | None = None):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def start_llama_server(gguf, log_path, *extra: str) -> tuple[subprocess.Popen, str]:
    """``python -m llama_cpp.server`` on a free port (``extra``: more of its flags); returns the process and
    its base URL at once (``wait_up`` waits for it)."""
    port = free_port()
    with open(log_path, "wb") as log:  # a file, not a pipe: an unread pipe would fill and stall the server
        proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
                                 "--port", str(port), "--n_ctx", "512", *extra, "--logits_all", "true"],
                                stdout=log, stderr=subprocess.STDOUT)
    proc.log_path = log_path
    return proc, f"http://127.0.0.1:{port}/v1"


def start_plumb_server(gguf, log_path, hf_dir=None, port: int | None = None,
                       threads: int = 1) -> tuple[subprocess.Popen, str]:
    """``plumb serve GGUF`` (llama.cpp on ``threads``) on ``port`` or a free one; returns the process and its
    base URL at once (``wait_up`` waits for it)."""
    port = port or free_port()
    env = {**os.environ, "PLUMB_THREADS": str(threads)}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "plumb", "serve", str(gguf), "--port", str(port),
                                 *(["--hf", str(hf_dir)] if hf_dir else [])], stdout=log, stderr=subprocess.STDOUT,
                                env=env)
    proc.log_path = log_path
    return proc, f"http://127.0.0.1:{port}/v1"


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


@contextlib.contextmanager
def running(servers: list[tuple[subprocess.Popen, str]], seconds: float = 60):
    """Waits for each (process, base URL) that ``start_*`` returned to answer, yields them, and stops every one
    at the end (SIGTERM: `plumb serve` removes its converted adapters; SIGKILL after 10 s)."""
    try:
        for proc, url in servers:
            wait_up(proc, url, proc.log_path, seconds)
        yield servers
    finally:
        for proc, _ in servers:
            proc.terminate()
        for proc, _ in servers:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def wait_up(proc: subprocess.Popen, base: str, log_path, seconds: float) -> None:
    """Until the server answers GET /models; fails the test with its log's tail if it dies or takes longer."""
    deadline = time.time() + seconds
    while True:
        try:
            urllib.request.urlopen(base + "/models", timeout=1)
            return
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"{' '.join(map(str, proc.args[:4]))} did not start: {log_path.read_text(errors='replace')[-500:]}")
            time.sleep(0.3)
