"""The ``hf`` backend (``hf:DIR_OR_HUB_ID``): sampling from a Hugging Face model through transformers.

A thin plugin over ``plumb.train.generate`` (the same code samples GRPO's live policy); the counting
rule of its option log-probs is written there.
"""

from __future__ import annotations

from plumb.core.backend import Backend
from plumb.core.hookspecs import hookimpl
from plumb.core.records import Chat, Completion, ModelSpec, SamplingParams


class Transformers(Backend):
    name = "hf"
    description = "transformers: batched sampling from a Hugging Face model (also the GRPO policy)"

    def generate(self, model: ModelSpec, chats: list[Chat], params: SamplingParams) -> list[list[Completion]]:
        from plumb.train.generate import generate_with, load

        hf_model, tokenizer = load(model.target)
        return generate_with(hf_model, tokenizer, chats, params, name=str(model))

    def option_logprobs(self, model: ModelSpec, chats: list[Chat], options: list[str]) -> list[dict[str, float]]:
        from plumb.train.generate import load, option_logprobs_with

        hf_model, tokenizer = load(model.target)
        return option_logprobs_with(hf_model, tokenizer, chats, options)


@hookimpl
def plumb_register_backends(register) -> None:
    register(Transformers())
