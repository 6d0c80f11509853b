"""OpenAI-compatible HTTP backend (``openai:http://HOST:PORT/v1[,http://HOST2:PORT/v1...][#MODEL]``).

Any server speaking ``POST /v1/chat/completions`` — llama.cpp's server,
``python -m llama_cpp.server``, vLLM, LM Studio — or a pool of them serving the
same model. A thin backend object over ``plumb.serving.openai_chat`` (what it
guarantees is written there and in ``plumb.serving.pool``): generation and
option log-probs, with a peft LoRA adapter (``+lora:DIR[@SCALE]``) loaded on the
servers by vLLM's runtime LoRA API.
"""

from __future__ import annotations

from plumb.core.backend import Backend
from plumb.core.hookspecs import hookimpl
from plumb.core.records import Chat, Completion, ModelSpec, SamplingParams


class OpenAIHTTP(Backend):
    name = "openai"
    lora_scale = True  # a scaled copy of the adapter is loaded (servers take no per-request scale)
    adapters = "peft"
    description = ("OpenAI-compatible HTTP servers (llama.cpp server, vLLM, ...), one or a pool: chat completions, "
                   "n, logprobs, option log-probs")

    def generate(self, model: ModelSpec, chats: list[Chat], params: SamplingParams) -> list[list[Completion]]:
        from plumb.serving import openai_chat

        return openai_chat.generate(model, chats, params)

    def option_logprobs(self, model: ModelSpec, chats: list[Chat],
                        options: list[str]) -> list[dict[str, float]] | None:
        from plumb.serving import openai_chat

        return openai_chat.option_logprobs(model, chats, options)


@hookimpl
def plumb_register_backends(register) -> None:
    register(OpenAIHTTP())
