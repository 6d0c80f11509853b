"""Anthropic backend (``anthropic:MODEL_NAME``): the optional strong critic and judge.

Through the official ``anthropic`` SDK. The key comes from
``ANTHROPIC_API_KEY`` only — never from a flag, a file or plumb.toml — and
never appears in an error message: every message is scrubbed of it. The SDK
retries 408/409/429/5xx and 529 "overloaded" with exponential backoff
(honouring ``retry-after``), ``PLUMB_ANTHROPIC_RETRIES`` times; each request
times out after ``PLUMB_ANTHROPIC_TIMEOUT`` seconds. ``PLUMB_ANTHROPIC_BASE_URL``
(or the SDK's own ``ANTHROPIC_BASE_URL``) points it at another endpoint, e.g. a
local test server.

The Messages API has no ``n``, no seed and no token log-probs, and the SDK
in use (anthropic 2.x) takes no temperature or top_p either: ``n`` answers are
``n`` requests at the API's own sampling settings; ``max_tokens`` and ``stop``
are sent; ``top_logprobs`` stays None.
"""

from __future__ import annotations

import os
from typing import Any

from plumb.core.backend import Backend
from plumb.core.errors import PlumbError
from plumb.core.hookspecs import hookimpl
from plumb.core.records import Chat, Completion, ModelSpec, SamplingParams


class Anthropic(Backend):
    name = "anthropic"
    description = "Anthropic Messages API (key from ANTHROPIC_API_KEY): critic and judge"

    def generate(self, model: ModelSpec, chats: list[Chat], params: SamplingParams) -> list[list[Completion]]:
        client = make_client()
        return [[complete(client, model, chat, params) for _ in range(params.n)] for chat in chats]


@hookimpl
def plumb_register_backends(register) -> None:
    register(Anthropic())


def scrub(text: str) -> str:
    key = os.environ.get("ANTHROPIC_API_KEY")
    return text.replace(key, "[ANTHROPIC_API_KEY]") if key else text


def make_client() -> Any:
    import anthropic

    key = os.environ.get("ANTHROPIC_API_KEY")
    if not key:
        raise PlumbError("the anthropic: backend needs an API key in the ANTHROPIC_API_KEY environment variable "
                         "(plumb never reads it from a file or a flag).", exit_code=2)
    return anthropic.Anthropic(
        api_key=key,
        base_url=os.environ.get("PLUMB_ANTHROPIC_BASE_URL") or None,  # None: the SDK's default / ANTHROPIC_BASE_URL
        max_retries=int(os.environ.get("PLUMB_ANTHROPIC_RETRIES", 4)),
        timeout=float(os.environ.get("PLUMB_ANTHROPIC_TIMEOUT", 120)),
    )


def complete(client: Any, model: ModelSpec, chat: Chat, params: SamplingParams) -> Completion:
    import anthropic

    system = "\n\n".join(m.content for m in chat.messages if m.role == "system")
    messages = [m for m in chat.to_dicts() if m["role"] != "system"]
    kwargs: dict[str, Any] = dict(model=model.target, messages=messages, max_tokens=params.max_tokens)
    if system:
        kwargs["system"] = system
    if params.stop:
        kwargs["stop_sequences"] = list(params.stop)
    try:
        msg = client.messages.create(**kwargs)
    except anthropic.AuthenticationError:
        raise PlumbError("Anthropic rejected the API key in ANTHROPIC_API_KEY (401); check it.") from None
    except anthropic.APIStatusError as exc:
        raise PlumbError(scrub(f"Anthropic answered HTTP {exc.status_code} for {model} after retries: "
                               f"{exc.message}")) from None
    except anthropic.APITimeoutError:
        raise PlumbError(f"Anthropic did not answer {model} in time (PLUMB_ANTHROPIC_TIMEOUT).") from None
    except anthropic.APIConnectionError as exc:
        raise PlumbError(scrub(f"cannot reach the Anthropic API: {exc}.")) from None
    blocks = getattr(msg, "content", None)
    if not isinstance(blocks, list) or not all(hasattr(b, "type") for b in blocks):
        raise PlumbError(f"malformed response from Anthropic for {model}: no content blocks.")
    text = "".join(getattr(b, "text", "") or "" for b in blocks if b.type == "text")
    usage = getattr(msg, "usage", None)
    stop = getattr(msg, "stop_reason", None)
    return Completion(text=text, model=str(model), backend="anthropic",
                      finish_reason="length" if stop == "max_tokens" else "stop",
                      prompt_tokens=int(getattr(usage, "input_tokens", 0) or 0),
                      completion_tokens=int(getattr(usage, "output_tokens", 0) or 0),
                      params=params.to_dict())
