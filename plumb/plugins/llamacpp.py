"""The ``llamacpp`` backend (``llamacpp:PATH.gguf[+lora:ADAPTER.gguf[@SCALE]]``): the default local backend.

A thin plugin over the library ``plumb.llamacpp`` (what it guarantees is written there): generation
and option log-probs for specs whose backend is ``llamacpp``.
"""

from __future__ import annotations

from plumb.core.hookspecs import hookimpl
from plumb.core.records import Chat, ModelSpec, SamplingParams


@hookimpl
def plumb_register_backends(register) -> None:
    register("llamacpp", "llama.cpp in-process: GGUF models, LoRA GGUF adapters, prefix reuse, logprobs, "
             "option log-probs, batched sampling")


@hookimpl
def plumb_generate(model: ModelSpec, chats: list[Chat], params: SamplingParams):
    if model.backend != "llamacpp":
        return None
    from plumb.llamacpp import generate

    return generate(model, chats, params)


@hookimpl
def plumb_option_logprobs(model: ModelSpec, chats: list[Chat], options: list[str]):
    if model.backend != "llamacpp":
        return None
    from plumb.llamacpp import option_logprobs

    return option_logprobs(model, chats, options)
