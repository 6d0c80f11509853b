"""Model specs: one string names a model everywhere (CLI, plumb.toml, TUI).

    llamacpp:PATH.gguf[+lora:ADAPTER.gguf[@SCALE]]   in-process llama.cpp
    hf:DIR_OR_HUB_ID                                 transformers (training base, GRPO sampling)
    anthropic:MODEL_NAME                             Anthropic Messages API (key from ANTHROPIC_API_KEY)
    openai:http://HOST:PORT/v1                       any OpenAI-compatible server
    starter                                          SmolLM2-135M-Instruct, pulled once per user

``starter`` resolves by role: the GGUF (llamacpp) for generation and serving,
the dequantized HF copy for training.
"""

from __future__ import annotations

from plumb.core.errors import PlumbError
from plumb.core.records import ModelSpec

BACKENDS = ("llamacpp", "hf", "anthropic", "openai")
FORMS = (
    "llamacpp:PATH.gguf[+lora:ADAPTER.gguf[@SCALE]], hf:DIR_OR_HUB_ID, anthropic:MODEL_NAME, "
    "openai:http://HOST:PORT/v1, or starter"
)


def parse_spec(spec: str, role: str = "generate") -> ModelSpec:
    """Parse a model spec string; ``role`` ("generate" or "train") resolves aliases."""
    text = spec.strip()
    if text in ("starter", "llamacpp:starter", "hf:starter"):
        from plumb import starter

        if text == "hf:starter" or (text == "starter" and role == "train"):
            return ModelSpec("hf", str(starter.hf_dir()))
        return ModelSpec("llamacpp", str(starter.gguf_path()))
    backend, sep, rest = text.partition(":")
    if not sep or backend not in BACKENDS or not rest:
        raise PlumbError(f"bad model spec {spec!r}. Accepted forms: {FORMS}.", exit_code=2)
    lora, scale = None, 1.0
    if backend == "llamacpp" and "+lora:" in rest:
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
