"""OpenAI-compatible HTTP backend (``openai:http://HOST:PORT/v1[,http://HOST2:PORT/v1...][#MODEL]``).

Any server speaking ``POST /v1/chat/completions`` — llama.cpp's server,
``python -m llama_cpp.server``, vLLM, LM Studio — or a pool of them serving the
same model. A thin plugin over ``plumb.serving.openai_chat`` (what it guarantees
is written there and in ``plumb.serving.pool``): generation and option
log-probs for specs whose backend is ``openai``.
"""

from __future__ import annotations

from plumb.core.hookspecs import hookimpl
from plumb.core.records import Chat, ModelSpec, SamplingParams


@hookimpl
def plumb_register_backends(register) -> None:
    register("openai", "OpenAI-compatible HTTP servers (llama.cpp server, vLLM, ...), one or a pool: chat "
             "completions, n, logprobs, option log-probs")


@hookimpl
def plumb_generate(model: ModelSpec, chats: list[Chat], params: SamplingParams):
    if model.backend != "openai":
        return None
    from plumb.serving import openai_chat

    return openai_chat.generate(model, chats, params)


@hookimpl
def plumb_option_logprobs(model: ModelSpec, chats: list[Chat], options: list[str]):
    if model.backend != "openai":
        return None
    from plumb.serving import openai_chat

    return openai_chat.option_logprobs(model, chats, options)
