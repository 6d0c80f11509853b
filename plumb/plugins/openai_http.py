"""OpenAI-compatible HTTP backend (``openai:http://HOST:PORT/v1[#MODEL]``).

Any server speaking ``POST /v1/chat/completions`` — llama.cpp's server,
``python -m llama_cpp.server``, vLLM, LM Studio — behind plain stdlib
``urllib``. The server applies its own chat template. ``n`` is asked for in
one request; servers that ignore it (llama_cpp.server does) are asked again
until there are ``n`` answers, with ``seed + i`` when a seed is set.
``OPENAI_API_KEY`` is sent as a bearer token when set, and never echoed.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

from plumb.core.backend import Backend
from plumb.core.errors import PlumbError
from plumb.core.hookspecs import hookimpl
from plumb.core.records import Chat, Completion, ModelSpec, SamplingParams

TIMEOUT_S = float(os.environ.get("PLUMB_HTTP_TIMEOUT", 300))


class OpenAIHTTP(Backend):
    name = "openai"
    description = "OpenAI-compatible HTTP server (llama.cpp server, vLLM, ...): chat completions, n, logprobs"

    def generate(self, model: ModelSpec, chats: list[Chat], params: SamplingParams) -> list[list[Completion]]:
        return [complete_chat(model, chat, params) for chat in chats]


@hookimpl
def plumb_register_backends(register) -> None:
    register(OpenAIHTTP())


def split_target(target: str) -> tuple[str, str]:
    """``http://host:port/v1#model`` -> (base URL, model name; "default" if none)."""
    url, _, name = target.partition("#")
    if not url.startswith(("http://", "https://")):
        raise PlumbError(f"bad openai model spec {target!r}: expected openai:http://HOST:PORT/v1[#MODEL].", exit_code=2)
    return url.rstrip("/"), name or "default"


def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    key = os.environ.get("OPENAI_API_KEY")
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:300].decode("utf-8", "replace")
        raise PlumbError(f"{url} answered HTTP {exc.code}: {detail}") from None
    except urllib.error.URLError as exc:
        raise PlumbError(f"cannot reach the OpenAI-compatible server at {url}: {exc.reason}. "
                         "Is it running (e.g. `python -m llama_cpp.server --model M.gguf`)?") from None
    except TimeoutError:
        raise PlumbError(f"{url} did not answer within {TIMEOUT_S:.0f} s (PLUMB_HTTP_TIMEOUT).") from None
    except json.JSONDecodeError:
        raise PlumbError(f"{url} answered with something that is not JSON; is it an OpenAI-compatible server?") \
            from None


def to_completion(choice: dict[str, Any], usage: dict[str, Any], name: str, params: SamplingParams) -> Completion:
    try:
        text = choice["message"]["content"] or ""
    except (KeyError, TypeError):
        raise PlumbError(f"malformed chat completion from {name}: a choice has no message content.") from None
    lps = None
    content = (choice.get("logprobs") or {}).get("content") if params.logprobs else None
    if content:
        lps = [{alt["token"]: float(alt["logprob"]) for alt in tok.get("top_logprobs", [])} for tok in content]
    return Completion(text=text, model=name, backend="openai", finish_reason=choice.get("finish_reason") or "stop",
                      prompt_tokens=int(usage.get("prompt_tokens", 0)),
                      completion_tokens=int(usage.get("completion_tokens", 0)), top_logprobs=lps,
                      params=params.to_dict())


def complete_chat(model: ModelSpec, chat: Chat, params: SamplingParams) -> list[Completion]:
    base, name = split_target(model.target)
    out: list[Completion] = []
    while len(out) < params.n:
        body: dict[str, Any] = {
            "model": name, "messages": chat.to_dicts(), "n": params.n - len(out),
            "temperature": params.temperature, "top_p": params.top_p, "max_tokens": params.max_tokens,
        }
        if params.seed is not None:
            body["seed"] = params.seed + len(out)
        if params.stop:
            body["stop"] = list(params.stop)
        if params.logprobs:
            body.update(logprobs=True, top_logprobs=params.logprobs)
        data = post(base + "/chat/completions", body)
        choices = data.get("choices") if isinstance(data, dict) else None
        if not choices:
            raise PlumbError(f"malformed chat completion from {base}: no choices in {str(data)[:200]!r}.")
        out += [to_completion(c, data.get("usage") or {}, str(model), params) for c in choices]
    return out[: params.n]
