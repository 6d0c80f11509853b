"""llama.cpp in process: the library behind the ``llamacpp`` backend plugin (``plumb.plugins.llamacpp``)
and the TUI's chat. Quantized GGUF models on the CPU through llama-cpp-python. What it guarantees:

* **The model's own chat template.** The prompt is rendered from the GGUF's
  ``tokenizer.chat_template`` (the template the model was trained with, written
  there by ``plumb export gguf``) with Jinja2, as transformers renders it; BOS
  is prepended only if the GGUF says so. llama-cpp-python is never left to
  guess a chat format.
* **One loaded model per (file, context size) per process**, kept across
  calls. Consecutive prompts that share a prefix (a judge's long constitution
  preamble) only evaluate the new suffix: the KV cache holds the previous
  prompt and is cut back to the longest common prefix.
* **Base and tuned from one loaded model.** A GGUF LoRA adapter is loaded once
  on top of the base and switched on, off or rescaled per call (scale 0 = base);
  switching invalidates the cached prefix, nothing is reloaded.
* **Sampling by llama.cpp's own sampler chain** (top-p, temperature, seeded
  distribution; greedy at temperature 0) and, on request, the top-k log-probs
  of every generated token computed from the raw logits — without
  ``logits_all``, which would keep a (context x vocabulary) float matrix —
  with each sampled token's own log-prob and id.
  Log-probs are keyed by token text; distinct tokens with the same text are
  one entry whose probability is their sum over the whole vocabulary.
* **Several samples at once.** Sampling at temperature > 0 with more than
  one sequence to produce (``n`` > 1 or several prompts) decodes the
  sequences together in a second context on the same weights, one seeded
  sampler per completion (``plumb.llamacpp.batch``). Greedy decoding keeps
  the one-sequence path: each completion after the other, all drawn from one
  sampler seeded once.
* **Streaming.** ``stream`` decodes one chat's answer as ``generate`` does
  and hands the text so far to a callback after every token (a chat UI);
  an exception the callback raises stops decoding and propagates.
* **Option log-probs without sampling** (``option_logprobs``): log p(option |
  chat) for a judge's candidate answers ("A", "B", "tie"), each option
  teacher-forced after the prompt, whose prefix cache is reused as above.
  Counting rule: the option is tokenized on its own (no BOS, no special
  tokens) and scored as that token sequence, except that its *first* token
  stands for every vocabulary token with exactly the same text: log p =
  logsumexp over those tokens t of [log p(t | prompt) + log p(rest | prompt,
  t)]. A first token that is a piece of a character (its text alone is not
  valid UTF-8) counts alone. Other tokenizations of the option's text (e.g.
  "t" + "ie" for "tie") are not counted.

Knobs: ``PLUMB_N_CTX`` (context size; default 4096, capped at the model's
training context), ``PLUMB_BATCH_CTX`` (KV cells of the batched-sampling
context, shared by all its sequences; default and minimum: the context
size), ``PLUMB_THREADS`` (default: every core this process may use — lower
it on a machine shared with other heavy work, where llama.cpp's threads
otherwise wait on each other).
"""

from __future__ import annotations

from typing import Callable

from plumb.core.records import Chat, Completion, ModelSpec, SamplingParams
from plumb.llamacpp.model import (_LOCK, DEFAULT_N_CTX, Loaded, VocabText, apply_lora, close_all, complete,
                                  cpu_threads, cut_at_stop, drop_adapter, fit_prompts, last_logits, load,
                                  load_adapter, log_softmax, make_sampler, option_logprobs, option_paths, prefill,
                                  prompt_tokens, render_chat, set_adapter, top_logprobs)

__all__ = ["DEFAULT_N_CTX", "Loaded", "VocabText", "apply_lora", "close_all", "complete", "cpu_threads",
           "cut_at_stop", "drop_adapter", "fit_prompts", "generate", "last_logits", "load", "load_adapter",
           "log_softmax", "make_sampler", "option_logprobs", "option_paths", "prefill", "prompt_tokens",
           "render_chat", "set_adapter", "stream", "top_logprobs"]


def _generate(spec: ModelSpec, chats: list[Chat], params: SamplingParams, n_ctx: int | None,
              batched: bool | None) -> list[list[Completion]]:
    import llama_cpp

    loaded = load(spec.target, n_ctx)
    set_adapter(loaded, spec.lora, spec.lora_scale if spec.lora else 0.0)
    prompts = fit_prompts(spec, loaded, chats)
    name = _name(spec)
    if batched is None:
        batched = params.temperature > 0 and params.n * len(prompts) > 1
    if batched:
        from plumb.llamacpp.batch import sample_batched

        return sample_batched(loaded, prompts, params, name)
    sampler = make_sampler(params, params.seed)
    try:
        return [[complete(loaded, toks, params, sampler, name) for _ in range(params.n)] for toks in prompts]
    finally:
        llama_cpp.llama_sampler_free(sampler)


def _name(spec: ModelSpec) -> str:
    """The model name completions carry: the spec, with the adapter's scale unless it is 1."""
    return str(spec) + (f"@{spec.lora_scale:g}" if spec.lora and spec.lora_scale != 1.0 else "")


def generate(spec: ModelSpec, chats: list[Chat], params: SamplingParams, n_ctx: int | None = None,
             batched: bool | None = None) -> list[list[Completion]]:
    """One list of ``params.n`` completions per chat (one caller at a time: the model and its cache are shared).

    ``batched`` None (the default) decodes the sequences together when sampling (temperature > 0)
    more than one sequence, else one at a time: samples of a prompt one after the other from one
    sampler seeded once. True forces the batched decoder, False the other. With ``params.logprobs``
    both give each token's top log-probs, the sampled tokens' own and their ids."""
    with _LOCK:
        return _generate(spec, chats, params, n_ctx, batched)


def stream(spec: ModelSpec, chat: Chat, params: SamplingParams, on_text: Callable[[str], None],
           n_ctx: int | None = None) -> Completion:
    """One completion of ``chat`` (``params.n`` is ignored), decoded as ``generate`` decodes one sequence,
    with ``on_text(text so far)`` called after every token. An exception raised by ``on_text`` (a UI's
    cancel) stops decoding and propagates; the model and its cache stay usable."""
    import llama_cpp

    with _LOCK:
        loaded = load(spec.target, n_ctx)
        set_adapter(loaded, spec.lora, spec.lora_scale if spec.lora else 0.0)
        (tokens,) = fit_prompts(spec, loaded, [chat])
        sampler = make_sampler(params, params.seed)
        try:
            return complete(loaded, tokens, params, sampler, _name(spec), on_text)
        finally:
            llama_cpp.llama_sampler_free(sampler)
