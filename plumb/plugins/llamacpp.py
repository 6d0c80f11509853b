"""llama.cpp in-process backend (``llamacpp:PATH.gguf[+lora:ADAPTER.gguf[@SCALE]]``).

The default local backend: quantized GGUF models on the CPU through
llama-cpp-python. What it guarantees:

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
  ``logits_all``, which would keep a (context x vocabulary) float matrix.

Knobs: ``PLUMB_N_CTX`` (context size; default 4096, capped at the model's
training context), ``PLUMB_THREADS`` (default: every core this process may
use — lower it on a machine shared with other heavy work, where llama.cpp's
threads otherwise wait on each other).
"""

from __future__ import annotations

import atexit
import ctypes
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plumb.core.errors import PlumbError
from plumb.core.hookspecs import hookimpl
from plumb.core.records import Chat, Completion, ModelSpec, SamplingParams

DEFAULT_N_CTX = 4096


@hookimpl
def plumb_register_backends(register) -> None:
    register("llamacpp", "llama.cpp in-process: GGUF models, LoRA GGUF adapters, prefix reuse, logprobs")


@hookimpl
def plumb_generate(model: ModelSpec, chats: list[Chat], params: SamplingParams):
    if model.backend != "llamacpp":
        return None
    return generate(model, chats, params)


# -- loading, once per process -------------------------------------------------------


@dataclass
class Loaded:
    """A llama.cpp model kept in memory, with what is needed to prompt it right."""

    llm: Any
    path: str
    template: str
    add_bos: bool
    bos: str
    eos: str
    adapters: dict[str, Any] = field(default_factory=dict)  # path -> llama_adapter_lora_p
    active: tuple[str | None, float] = (None, 0.0)

    @property
    def n_ctx(self) -> int:
        return self.llm.n_ctx()


_LOADED: dict[tuple[str, int], Loaded] = {}
_LOCK = threading.RLock()


def cpu_threads() -> int:
    """Threads for llama.cpp: $PLUMB_THREADS, else every core this process may use."""
    if os.environ.get("PLUMB_THREADS"):
        return max(1, int(os.environ["PLUMB_THREADS"]))
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load(path: str | Path, n_ctx: int | None = None) -> Loaded:
    """The cached llama.cpp model for ``path``; loaded on first use."""
    explicit = n_ctx or int(os.environ.get("PLUMB_N_CTX", 0))
    n_ctx = explicit or DEFAULT_N_CTX
    key = (str(Path(path).resolve()), n_ctx)
    if key in _LOADED:
        return _LOADED[key]
    if not Path(path).is_file():
        raise PlumbError(f"no GGUF model at {path}. Pass a GGUF file (llamacpp:PATH.gguf), or run "
                         "`plumb export gguf` to make one from a Hugging Face model.", exit_code=2)
    from llama_cpp import Llama

    from plumb.export.quantize import captured_stderr

    threads = cpu_threads()
    with captured_stderr() as log:  # llama.cpp's load log, shown only if loading fails
        try:
            llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                        logits_all=False, verbose=False)
            n_train = llm._model.n_ctx_train()
            if not explicit and n_train < n_ctx:  # a default never exceeds what the model was trained on
                llm.close()
                llm = Llama(model_path=str(path), n_ctx=n_train, n_threads=threads,
                            n_threads_batch=threads, logits_all=False, verbose=False)
        except (ValueError, RuntimeError) as exc:
            tail = " ".join(log.read_text(errors="replace").splitlines()[-3:]).strip()
            raise PlumbError(f"llama.cpp could not load {path}: {exc}. {tail} "
                             "Is it a GGUF file this llama.cpp supports?") from None
    meta = llm.metadata
    template = meta.get("tokenizer.chat_template")
    if not template:
        llm.close()
        raise PlumbError(f"{path} has no chat template (tokenizer.chat_template); plumb will not guess one. "
                         "Re-export it with `plumb export gguf`, which copies the tokenizer's template.")

    def token_text(key: str) -> str:
        tid = meta.get(key)
        return llm.detokenize([int(tid)], special=True).decode("utf-8", "replace") if tid is not None else ""

    loaded = Loaded(llm, str(path), template, meta.get("tokenizer.ggml.add_bos_token", "false") == "true",
                    token_text("tokenizer.ggml.bos_token_id"), token_text("tokenizer.ggml.eos_token_id"))
    _LOADED[key] = loaded
    return loaded


def set_adapter(loaded: Loaded, lora: str | None, scale: float) -> None:
    """Apply ``lora`` at ``scale`` (None or 0 = base model); a change drops the cached prefix."""
    import llama_cpp

    want = (str(Path(lora).resolve()), float(scale)) if lora and scale != 0 else (None, 0.0)
    if want == loaded.active:
        return
    ctx = loaded.llm._ctx.ctx
    if want[0] is None:
        rc = llama_cpp.llama_set_adapters_lora(ctx, None, 0, None)
    else:
        adapter = loaded.adapters.get(want[0])
        if adapter is None:
            if not Path(want[0]).is_file():
                raise PlumbError(f"no LoRA adapter at {lora}. Export one with `plumb export gguf --adapter DIR`.",
                                 exit_code=2)
            adapter = llama_cpp.llama_adapter_lora_init(loaded.llm._model.model, want[0].encode())
            if not adapter:
                raise PlumbError(f"llama.cpp could not load the LoRA adapter {lora} on {loaded.path}: "
                                 "is it a GGUF LoRA made for this base model (same architecture and sizes)?")
            loaded.adapters[want[0]] = adapter
        rc = llama_cpp.llama_set_adapters_lora(ctx, (llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapter), 1,
                                               (ctypes.c_float * 1)(want[1]))
    if rc != 0:
        raise PlumbError(f"llama.cpp could not apply the LoRA adapter {lora} (code {rc}).")
    loaded.llm.n_tokens = 0  # the KV cache was computed with other weights
    loaded.active = want


@atexit.register
def close_all() -> None:
    """Free adapters and models before interpreter shutdown (Llama.__del__ at exit raises)."""
    import sys

    llama_cpp = sys.modules.get("llama_cpp")
    for loaded in _LOADED.values():
        if llama_cpp is not None and loaded.adapters:
            llama_cpp.llama_set_adapters_lora(loaded.llm._ctx.ctx, None, 0, None)
            for adapter in loaded.adapters.values():
                llama_cpp.llama_adapter_lora_free(adapter)
            loaded.adapters.clear()
        loaded.llm.close()
    _LOADED.clear()


# -- prompting -----------------------------------------------------------------------


def render_chat(template: str, messages: list[dict[str, str]], bos: str = "", eos: str = "") -> str:
    """Render a chat with a Hugging Face chat template, the way transformers does."""
    from datetime import datetime

    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise PlumbError(f"the model's chat template refused the conversation: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template).render(messages=messages, add_generation_prompt=True,
                                            bos_token=bos, eos_token=eos)


def prompt_tokens(loaded: Loaded, chat: Chat) -> list[int]:
    text = render_chat(loaded.template, chat.to_dicts(), loaded.bos, loaded.eos)
    return loaded.llm.tokenize(text.encode("utf-8"), add_bos=loaded.add_bos, special=True)


def prefill(llm: Any, tokens: list[int]):
    """Evaluate ``tokens``, reusing the cached common prefix; return the next-token logits."""
    cached = llm.n_tokens
    common = 0
    for a, b in zip(llm.input_ids[:cached], tokens):
        if a != b:
            break
        common += 1
    llm.n_tokens = min(common, len(tokens) - 1)  # re-evaluate at least one token for fresh logits
    llm.eval(tokens[llm.n_tokens:])  # drops the cache past n_tokens, then decodes the rest
    return last_logits(llm)


def last_logits(llm: Any):
    import llama_cpp
    import numpy as np

    ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).copy()


def top_logprobs(llm: Any, logits, k: int) -> dict[str, float]:
    import numpy as np

    z = logits - logits.max()
    logp = z - np.log(np.exp(z).sum())
    top = np.argpartition(-logp, min(k, len(logp) - 1))[:k]
    out: dict[str, float] = {}
    for tid in sorted(top, key=lambda t: -logp[t]):
        text = llm.detokenize([int(tid)], special=True).decode("utf-8", "replace")
        out.setdefault(text, float(logp[tid]))
    return out


def make_sampler(params: SamplingParams, seed: int | None):
    import llama_cpp

    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    if params.temperature <= 0:
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
        return chain
    if params.top_p < 1.0:
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_temp(params.temperature))
    llama_cpp.llama_sampler_chain_add(
        chain, llama_cpp.llama_sampler_init_dist(llama_cpp.LLAMA_DEFAULT_SEED if seed is None else seed & 0xFFFFFFFF))
    return chain


def complete(loaded: Loaded, tokens: list[int], params: SamplingParams, sampler, name: str) -> Completion:
    """One completion of ``tokens``: decode until EOG, a stop string, max_tokens or a full context."""
    import llama_cpp

    llm = loaded.llm
    vocab = llama_cpp.llama_model_get_vocab(llm._model.model)
    logits = prefill(llm, tokens)
    out: list[int] = []
    lps: list[dict[str, float]] | None = [] if params.logprobs else None
    finish, text = "length", ""
    while len(out) < params.max_tokens:
        if llm.n_tokens >= loaded.n_ctx:
            break
        tok = llama_cpp.llama_sampler_sample(sampler, llm._ctx.ctx, -1)
        if lps is not None:
            lps.append(top_logprobs(llm, logits, params.logprobs))
        if llama_cpp.llama_vocab_is_eog(vocab, tok):
            finish = "stop"
            break
        out.append(tok)
        text = llm.detokenize(out).decode("utf-8", "replace")
        hit = [i for i in (text.find(s) for s in params.stop if s) if i >= 0]
        if hit:
            text, finish = text[: min(hit)], "stop"
            break
        llm.eval([tok])
        logits = last_logits(llm) if lps is not None else None
    return Completion(text=text, model=name, backend="llamacpp", finish_reason=finish,
                      prompt_tokens=len(tokens), completion_tokens=len(out), top_logprobs=lps,
                      params=params.to_dict())


def _generate(spec: ModelSpec, chats: list[Chat], params: SamplingParams,
              n_ctx: int | None) -> list[list[Completion]]:
    import llama_cpp

    loaded = load(spec.target, n_ctx)
    set_adapter(loaded, spec.lora, spec.lora_scale if spec.lora else 0.0)
    prompts = [prompt_tokens(loaded, chat) for chat in chats]
    for chat, toks in zip(chats, prompts):
        if len(toks) >= loaded.n_ctx:
            raise PlumbError(
                f"the prompt {chat.last_user[:40]!r}... is {len(toks)} tokens but {spec} runs with a context of "
                f"{loaded.n_ctx} tokens; shorten the prompt or set PLUMB_N_CTX to a larger context.", exit_code=2)
    name = str(spec) + (f"@{spec.lora_scale:g}" if spec.lora and spec.lora_scale != 1.0 else "")
    sampler = make_sampler(params, params.seed)
    try:
        return [[complete(loaded, toks, params, sampler, name) for _ in range(params.n)] for toks in prompts]
    finally:
        llama_cpp.llama_sampler_free(sampler)


def generate(spec: ModelSpec, chats: list[Chat], params: SamplingParams,
             n_ctx: int | None = None) -> list[list[Completion]]:
    """One list of ``params.n`` completions per chat (one caller at a time: the model and its cache are shared)."""
    with _LOCK:
        return _generate(spec, chats, params, n_ctx)
