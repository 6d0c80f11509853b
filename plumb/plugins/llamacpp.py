"""The ``llamacpp`` backend (``llamacpp:PATH.gguf[+lora:ADAPTER.gguf[@SCALE]]``): the default local backend.

A thin plugin over the library ``plumb.llamacpp`` (what it guarantees is written there): generation,
option log-probs and streaming; a spec's GGUF LoRA is applied at its scale on the one loaded base.
"""

from __future__ import annotations

from typing import Callable

from plumb.core.backend import Backend
from plumb.core.hookspecs import hookimpl
from plumb.core.records import Chat, Completion, ModelSpec, SamplingParams


class LlamaCpp(Backend):
    name = "llamacpp"
    description = ("llama.cpp in-process: GGUF models, LoRA GGUF adapters, prefix reuse, logprobs, option "
                   "log-probs, batched sampling, streaming")
    lora_scale = True

    def generate(self, model: ModelSpec, chats: list[Chat], params: SamplingParams) -> list[list[Completion]]:
        from plumb.llamacpp import generate

        return generate(model, chats, params)

    def option_logprobs(self, model: ModelSpec, chats: list[Chat], options: list[str]) -> list[dict[str, float]]:
        from plumb.llamacpp import option_logprobs

        return option_logprobs(model, chats, options)

    def stream(self, model: ModelSpec, chat: Chat, params: SamplingParams,
               on_text: Callable[[str], None]) -> Completion:
        from plumb.llamacpp import stream

        return stream(model, chat, params, on_text)


@hookimpl
def plumb_register_backends(register) -> None:
    register(LlamaCpp())
