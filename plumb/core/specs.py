"""Model specs: one string names a model everywhere (CLI, plumb.toml, TUI).

    llamacpp:PATH.gguf[+lora:ADAPTER.gguf[@SCALE]]   in-process llama.cpp
    hf:DIR_OR_HUB_ID                                 transformers (training base, GRPO sampling)
    anthropic:MODEL_NAME                             Anthropic Messages API (key from ANTHROPIC_API_KEY)
    openai:http://HOST:PORT/v1[,URL...][#MODEL][+lora:ADAPTER_DIR[@SCALE]]
                                                     any OpenAI-compatible server, or a pool of them; with a
                                                     LoRA, loaded on each server by vLLM's runtime LoRA API
    starter                                          SmolLM2-135M-Instruct, pulled once per user

    NAME:TARGET                                      any backend a plugin registers

``starter`` resolves by role: the GGUF (llamacpp) for generation and serving,
the dequantized HF copy for training. That needs the model cache, so it is
``plumb.models.specs.parse_spec`` that resolves it (a session hands it to
``HookContext``); here it is an error that says so. Parsing accepts any ``NAME:TARGET``;
whether a plugin answers for ``NAME`` is checked against the registry
(``Registry.check_backend``) before any work starts.
"""

from __future__ import annotations

import re

from plumb.core.errors import PlumbError
from plumb.core.records import ModelSpec

FORMS = (
    "llamacpp:PATH.gguf[+lora:ADAPTER.gguf[@SCALE]], hf:DIR_OR_HUB_ID, anthropic:MODEL_NAME, "
    "openai:http://HOST:PORT/v1[,http://HOST2:PORT/v1...][+lora:ADAPTER_DIR], starter, or NAME:TARGET for a backend a plugin registers"
)
_NAME = re.compile(r"^[A-Za-z][\w.-]*$")


STARTER = ("starter", "llamacpp:starter", "hf:starter")  # resolved by plumb.models.specs


def parse_spec(spec: str) -> ModelSpec:
    """Parse a model spec string. The starter's names are refused: ``plumb.models.specs.parse_spec``
    resolves them (by role, pulling the starter on first use)."""
    text = spec.strip()
    if text in STARTER:
        raise PlumbError(f"{text!r} names the starter model, which plumb.models.specs.parse_spec resolves; "
                         "this caller parsed it without the model cache (a bug: please report it).")
    backend, sep, rest = text.partition(":")
    if not sep or not _NAME.match(backend) or not rest:
        raise PlumbError(f"bad model spec {spec!r}. Accepted forms: {FORMS}.", exit_code=2)
    lora, scale = None, 1.0
    if backend in ("llamacpp", "openai") and "+lora:" in rest:
        rest, lora = rest.split("+lora:", 1)
        if "@" in lora:
            lora, s = lora.rsplit("@", 1)
            try:
                scale = float(s)
            except ValueError:
                raise PlumbError(f"bad LoRA scale {s!r} in {spec!r}: expected a number, e.g. +lora:a.gguf@0.5",
                                 exit_code=2) from None
        if not lora:
            raise PlumbError(f"empty LoRA path in {spec!r}. Accepted forms: {FORMS}.", exit_code=2)
    return ModelSpec(backend, rest, lora, scale)
