"""What a generation backend is: an object registered under its name.

A plugin hands plumb an instance in ``plumb_register_backends``
(``register(MyBackend())``); a model spec ``NAME:TARGET`` runs on the backend
registered as ``NAME``, and the core calls it directly (no backend filters by
name). Subclass ``Backend`` and override what the backend can do: ``generate``
is required, ``option_logprobs`` and ``stream`` have fallbacks.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from plumb.core.records import Chat, Completion, ModelSpec, SamplingParams


class Backend:
    name: str = ""
    description: str = ""
    lora_scale: bool = False  # applies a spec's LoRA at a per-call scale: base and tuned from one loaded model
    adapters: str = "gguf"  # what a spec's +lora: names: a GGUF LoRA file ("gguf") or a peft directory ("peft")

    def generate(self, model: ModelSpec, chats: list[Chat], params: SamplingParams) -> list[list[Completion]]:
        """One list of ``params.n`` completions per chat, in order."""
        raise NotImplementedError(f"backend {self.name!r} does not generate")

    def option_logprobs(self, model: ModelSpec, chats: list[Chat],
                        options: list[str]) -> list[dict[str, float]] | None:
        """Per chat, ``{option: log p(option | chat)}`` as the answer's start; None when the backend cannot
        score continuations (the caller then parses sampled text)."""
        return None

    def stream(self, model: ModelSpec, chat: Chat, params: SamplingParams,
               on_text: Callable[[str], None]) -> Completion:
        """One completion of ``chat`` with ``on_text(text so far)`` as it grows; an exception raised by
        ``on_text`` (a cancel) stops it. This fallback generates the whole answer, then calls ``on_text`` once."""
        completion = self.generate(model, [chat], replace(params, n=1))[0][0]
        on_text(completion.text)
        return completion
