"""`plumb serve`: an OpenAI-compatible server over plumb's llama.cpp, whose LoRA adapters change at run time.

llama.cpp's own servers load LoRA adapters only at start (``llama-server --lora``, whose
``POST /lora-adapters`` rescales those; ``python -m llama_cpp.server --lora_path``), so they cannot serve
an adapter that training has just written. This server answers the routes a vLLM server started with
``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` answers, in vLLM's shapes, so one client
(``plumb.serving``: GRPO's rollouts from a pool, ``openai:URL+lora:DIR`` specs) drives either:

* ``GET /v1/models``: the base model (as ``default`` and as the GGUF file's stem) and the loaded adapters.
* ``POST /v1/chat/completions``: ``messages``, ``n``, ``temperature``, ``top_p``, ``max_tokens``, ``seed``,
  ``stop``, ``logprobs``/``top_logprobs``, ``return_tokens_as_token_ids``; ``model`` names the base or a loaded
  adapter (404 for any other name, as vLLM). The ``n`` answers are decoded together
  (``plumb.llamacpp.generate``); with ``logprobs`` each sampled token's entry carries its own log-prob
  (temperature 1), its top alternatives, and as ``token`` its text or, asked, ``token_id:ID``.
* ``POST /v1/load_lora_adapter`` ``{"lora_name", "lora_path"}``: a peft adapter directory (converted to
  a GGUF LoRA by ``plumb.export``, against the base named in its adapter_config.json or ``--hf``) or a
  GGUF LoRA file. 400 when the name is taken, as vLLM.
* ``POST /v1/unload_lora_adapter`` ``{"lora_name"}``: frees it; 404 when no adapter has that name.

Requests run one at a time on the one loaded model (llama.cpp's context is not shared between threads);
concurrent requests wait their turn. Errors answer ``{"error": {"message", "type", "code"}}``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from plumb.core.errors import PlumbError
from plumb.core.records import Chat, ModelSpec, SamplingParams

BASE_NAMES = ("default",)


class HTTPError(Exception):
    def __init__(self, code: int, message: str, kind: str = "BadRequestError") -> None:
        super().__init__(message)
        self.code, self.kind = code, kind


@dataclass
class State:
    """The served model, its adapters (name -> (the path it was loaded from, the GGUF applied)) and where
    converted adapters are written."""

    gguf: str
    base_dir: str | None = None  # the HF base a peft adapter is converted against (default: its own config's)
    adapters: dict[str, tuple[str, str]] = field(default_factory=dict)
    work: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="plumb-serve-")))
    lock: threading.Lock = field(default_factory=threading.Lock)  # the adapter table

    @property
    def names(self) -> tuple[str, ...]:
        return BASE_NAMES + (Path(self.gguf).stem,)

    def spec(self, model: str) -> ModelSpec:
        if model in self.names:
            return ModelSpec("llamacpp", self.gguf)
        with self.lock:
            loaded = self.adapters.get(model)
        if loaded is None:
            raise HTTPError(404, f"The model `{model}` does not exist.", "NotFoundError")
        return ModelSpec("llamacpp", self.gguf, lora=loaded[1])

    def text(self, token: int) -> str:
        from plumb.llamacpp import load

        return load(self.gguf).vocab_text().texts[token]

    def load(self, name: str, path: str) -> str:
        if not name or not path:
            raise HTTPError(400, "lora_name and lora_path are both required.")
        with self.lock:
            if name in self.adapters or name in self.names:
                raise HTTPError(400, f"The lora adapter '{name}' has already been loaded.")
        source = Path(path)
        if source.is_dir():
            from plumb.export.lora_to_gguf import export_lora

            gguf = self.work / f"{hashlib.sha256(name.encode()).hexdigest()[:16]}.gguf"  # any name, a safe file
            try:
                export_lora(source, gguf, base_dir=self.base_dir)
            except (PlumbError, OSError, KeyError, ValueError) as exc:
                raise HTTPError(400, f"cannot convert the adapter at {path}: {exc}") from None
        elif source.is_file():
            gguf = source
        else:
            raise HTTPError(404, f"No adapter found at {path}.", "NotFoundError")
        from plumb.llamacpp import load_adapter

        try:  # loaded now: a bad adapter is refused here, not on the first request that names it
            load_adapter(self.gguf, str(gguf))
        except PlumbError as exc:
            raise HTTPError(400, str(exc)) from None
        with self.lock:
            self.adapters[name] = (path, str(gguf))
        return f"Success: LoRA adapter '{name}' added successfully."

    def unload(self, name: str) -> str:
        with self.lock:
            _, gguf = self.adapters.pop(name, (None, None))
        if gguf is None:
            raise HTTPError(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
        from plumb.llamacpp import drop_adapter

        drop_adapter(gguf)
        if Path(gguf).parent == self.work:
            Path(gguf).unlink(missing_ok=True)
        return f"Success: LoRA adapter '{name}' removed successfully."


def params_of(body: dict[str, Any]) -> SamplingParams:
    try:
        stop = body.get("stop") or ()
        logprobs = int(body.get("top_logprobs") or 1) if body.get("logprobs") else None
        return SamplingParams(n=int(body.get("n") or 1), temperature=float(body.get("temperature", 1.0)),
                              top_p=float(body.get("top_p", 1.0)), max_tokens=int(body.get("max_tokens") or 256),
                              seed=None if body.get("seed") is None else int(body["seed"]),
                              stop=(stop,) if isinstance(stop, str) else tuple(stop), logprobs=logprobs)
    except (TypeError, ValueError) as exc:
        raise HTTPError(400, f"bad sampling parameters: {exc}") from None


def chat_completion(state: State, body: dict[str, Any]) -> dict[str, Any]:
    from plumb.llamacpp import generate

    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise HTTPError(400, "messages must be a non-empty list.")
    model = str(body.get("model") or "default")
    spec, params = state.spec(model), params_of(body)
    try:
        (comps,) = generate(spec, [Chat.from_dicts(messages)], params)
    except PlumbError as exc:
        raise HTTPError(400, str(exc)) from None
    choices = []
    for i, c in enumerate(comps):
        choice: dict[str, Any] = {"index": i, "message": {"role": "assistant", "content": c.text},
                                  "finish_reason": c.finish_reason}
        if params.logprobs:
            ids = c.token_ids or []
            as_ids = bool(body.get("return_tokens_as_token_ids"))
            choice["logprobs"] = {"content": [
                {"token": f"token_id:{tid}" if as_ids else state.text(tid), "logprob": lp,
                 "top_logprobs": [{"token": t, "logprob": v} for t, v in top.items()]}
                for tid, lp, top in zip(ids, c.token_logprobs or [], c.top_logprobs or [])]}
        choices.append(choice)
    return {"object": "chat.completion", "model": model, "choices": choices,
            "usage": {"prompt_tokens": comps[0].prompt_tokens if comps else 0,
                      "completion_tokens": sum(c.completion_tokens for c in comps)}}


class Handler(BaseHTTPRequestHandler):
    server: "Server"

    def log_message(self, fmt: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(fmt, *args)

    def answer(self, code: int, body: Any) -> None:
        text = isinstance(body, str)
        data = (body if text else json.dumps(body)).encode()
        self.send_response(code)
        self.send_header("content-type", "text/plain; charset=utf-8" if text else "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path.rstrip("/") != "/v1/models":
            return self.answer(404, {"error": {"message": f"no route {self.path}", "type": "NotFoundError",
                                               "code": 404}})
        state = self.server.state
        with state.lock:
            adapters = dict(state.adapters)
        data = [{"id": n, "object": "model", "owned_by": "plumb"} for n in state.names]
        data += [{"id": n, "object": "model", "owned_by": "plumb", "parent": state.names[0], "root": source}
                 for n, (source, _) in adapters.items()]
        self.answer(200, {"object": "list", "data": data})

    def do_POST(self) -> None:  # noqa: N802
        state = self.server.state
        try:
            length = int(self.headers.get("content-length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except json.JSONDecodeError as exc:
                raise HTTPError(400, f"the body is not JSON: {exc}") from None
            if not isinstance(body, dict):
                raise HTTPError(400, "the body must be a JSON object.")
            route = self.path.rstrip("/")
            if route == "/v1/chat/completions":
                return self.answer(200, chat_completion(state, body))
            if route == "/v1/load_lora_adapter":
                return self.answer(200, state.load(str(body.get("lora_name") or ""), str(body.get("lora_path") or "")))
            if route == "/v1/unload_lora_adapter":
                return self.answer(200, state.unload(str(body.get("lora_name") or "")))
            raise HTTPError(404, f"no route {self.path}", "NotFoundError")
        except HTTPError as exc:
            self.answer(exc.code, {"error": {"message": str(exc), "type": exc.kind, "code": exc.code}})


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: State, host: str, port: int, verbose: bool = False) -> None:
        super().__init__((host, port), Handler)
        self.state, self.verbose = state, verbose

    def server_close(self) -> None:
        super().server_close()
        shutil.rmtree(self.state.work, ignore_errors=True)


def make_server(gguf: str, host: str = "127.0.0.1", port: int = 8000, base_dir: str | None = None,
                verbose: bool = False) -> Server:
    """The server, bound, with the model loaded (a missing or unreadable GGUF fails here, not on a request)."""
    from plumb.llamacpp import load

    if not Path(gguf).is_file():
        raise PlumbError(f"no GGUF model at {gguf}.", exit_code=2)
    load(gguf)
    try:
        return Server(State(gguf, base_dir), host, port, verbose)
    except OSError as exc:
        raise PlumbError(f"cannot listen on {host}:{port}: {exc.strerror or exc}.", exit_code=2) from None
