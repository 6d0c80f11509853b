"""llama.cpp models in this process: load once per (file, context size), the chat template, LoRA
adapters, prefix reuse, one-sequence decoding and option log-probs. ``plumb.llamacpp`` documents
what the library guarantees; ``batch`` decodes several sequences at once on a loaded model."""

from __future__ import annotations

import atexit
import ctypes
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from plumb.core.decoding import common_prefix, cut_at_stop
from plumb.core.errors import PlumbError
from plumb.core.records import Chat, Completion, ModelSpec, SamplingParams

DEFAULT_N_CTX = 4096


# -- loading, once per process -------------------------------------------------------


class VocabText:
    """The text of every vocabulary token (special tokens spelled out, a piece of a
    character as U+FFFD) and, per text, the ids of all the tokens that have it."""

    def __init__(self, texts: list[str]):
        import numpy as np

        self.texts = texts
        groups: dict[str, list[int]] = {}
        for tid, text in enumerate(texts):
            groups.setdefault(text, []).append(tid)
        self.ids = {text: np.array(tids) for text, tids in groups.items()}

    def same_text(self, tid: int) -> list[int]:
        """``tid`` and every other token with exactly its text; only ``tid`` for a piece of a character."""
        text = self.texts[tid]
        return [tid] if "\ufffd" in text else self.ids[text].tolist()


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
    vocab: VocabText | None = None  # made on first use
    batch: Any = None  # plumb.llamacpp.batch.BatchContext, made on first batched sampling

    @property
    def n_ctx(self) -> int:
        return self.llm.n_ctx()

    def vocab_text(self) -> VocabText:
        if self.vocab is None:
            detok = self.llm.detokenize
            self.vocab = VocabText([detok([t], special=True).decode("utf-8", "replace")
                                    for t in range(self.llm.n_vocab())])
        return self.vocab


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


def _adapter(loaded: Loaded, path: str) -> Any:
    """The adapter at ``path`` (resolved) on ``loaded``, loaded on first use."""
    import llama_cpp

    adapter = loaded.adapters.get(path)
    if adapter is None:
        if not Path(path).is_file():
            raise PlumbError(f"no LoRA adapter at {path}. Export one with `plumb export gguf --adapter DIR`.",
                             exit_code=2)
        adapter = llama_cpp.llama_adapter_lora_init(loaded.llm._model.model, path.encode())
        if not adapter:
            raise PlumbError(f"llama.cpp could not load the LoRA adapter {path} on {loaded.path}: "
                             "is it a GGUF LoRA made for this base model (same architecture and sizes)?")
        loaded.adapters[path] = adapter
    return adapter


def load_adapter(model: str, lora: str) -> None:
    """Load the GGUF LoRA ``lora`` for the model at ``model`` now, without applying it (a PlumbError when
    llama.cpp refuses it); later calls that name it find it loaded."""
    with _LOCK:
        _adapter(load(model), str(Path(lora).resolve()))


def set_adapter(loaded: Loaded, lora: str | None, scale: float) -> None:
    """Apply ``lora`` at ``scale`` (None or 0 = base model); a change drops the cached prefix."""
    import llama_cpp

    want = (str(Path(lora).resolve()), float(scale)) if lora and scale != 0 else (None, 0.0)
    if want == loaded.active:
        return
    adapter = None if want[0] is None else _adapter(loaded, want[0])
    apply_lora(loaded.llm._ctx.ctx, adapter, want[1], lora)
    loaded.llm.n_tokens = 0  # the KV cache was computed with other weights
    loaded.active = want


def apply_lora(ctx: Any, adapter: Any, scale: float, name: str | None) -> None:
    """Set the LoRA adapters of one llama.cpp context: ``adapter`` at ``scale``, or none (None)."""
    import llama_cpp

    if adapter is None:
        rc = llama_cpp.llama_set_adapters_lora(ctx, None, 0, None)
    else:
        rc = llama_cpp.llama_set_adapters_lora(ctx, (llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapter), 1,
                                               (ctypes.c_float * 1)(scale))
    if rc != 0:
        raise PlumbError(f"llama.cpp could not apply the LoRA adapter {name} (code {rc}).")


def drop_adapter(path: str) -> None:
    """Free the LoRA adapter loaded from ``path`` on every loaded model (first taken off the contexts
    that apply it). Nothing happens where it was never loaded."""
    import llama_cpp

    key = str(Path(path).resolve())
    with _LOCK:
        for loaded in _LOADED.values():
            adapter = loaded.adapters.pop(key, None)
            if adapter is None:
                continue
            if loaded.active[0] == key:
                apply_lora(loaded.llm._ctx.ctx, None, 0.0, None)
                loaded.llm.n_tokens = 0
                loaded.active = (None, 0.0)
            if loaded.batch is not None and loaded.batch.active[0] == key:
                apply_lora(loaded.batch.ctx, None, 0.0, None)
                loaded.batch.active = (None, 0.0)
            llama_cpp.llama_adapter_lora_free(adapter)


@atexit.register
def close_all() -> None:
    """Free adapters and models before interpreter shutdown (Llama.__del__ at exit raises)."""
    import sys

    llama_cpp = sys.modules.get("llama_cpp")
    for loaded in _LOADED.values():
        if loaded.batch is not None:
            loaded.batch.close()
            loaded.batch = None
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
    add_bos = loaded.add_bos and not (loaded.bos and text.startswith(loaded.bos))  # the template may render it
    return loaded.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)


def fit_prompts(spec: ModelSpec, loaded: Loaded, chats: list[Chat], room: int = 0,
                room_for: str = "") -> list[list[int]]:
    """Every chat's prompt tokens; a PlumbError if one, plus ``room`` tokens after it, does not fit the context."""
    prompts = [prompt_tokens(loaded, chat) for chat in chats]
    for chat, toks in zip(chats, prompts):
        if len(toks) + room >= loaded.n_ctx:
            extra = f" ({room_for} needs {room} more)" if room else ""
            raise PlumbError(
                f"the prompt {chat.last_user[:40]!r}... is {len(toks)} tokens but {spec} runs with a context of "
                f"{loaded.n_ctx} tokens{extra}; shorten the prompt or set PLUMB_N_CTX to a larger context.",
                exit_code=2)
    return prompts


def prefill(llm: Any, tokens: list[int]):
    """Evaluate ``tokens``, reusing the cached common prefix; return the next-token logits."""
    common = common_prefix(llm.input_ids[:llm.n_tokens], tokens)
    llm.n_tokens = min(common, len(tokens) - 1)  # re-evaluate at least one token for fresh logits
    llm.eval(tokens[llm.n_tokens:])  # drops the cache past n_tokens, then decodes the rest
    return last_logits(llm)


def last_logits(llm: Any):
    import llama_cpp
    import numpy as np

    ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).copy()


def log_softmax(logits):
    import numpy as np

    z = logits.astype(np.float64) - logits.max()
    return z - np.log(np.exp(z).sum())


def top_logprobs(loaded: Loaded, logits, k: int, logp=None) -> dict[str, float]:
    """The ``k`` most likely next texts -> log-prob, most likely first. Distinct tokens with the
    same text are one entry: the log of their summed probability over the whole vocabulary.
    ``logp``: ``log_softmax(logits)`` when the caller has it."""
    import numpy as np

    logp = log_softmax(logits) if logp is None else logp
    vocab = loaded.vocab_text()
    top = [int(np.argmax(logp))] if k == 1 else np.argpartition(-logp, min(k, len(logp) - 1))[:k]
    out: dict[str, float] = {}
    for tid in top:
        text = vocab.texts[tid]
        if text not in out:
            ids = vocab.ids[text]
            out[text] = float(logp[tid]) if len(ids) == 1 else float(np.logaddexp.reduce(logp[ids]))
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


# -- option log-probs ------------------------------------------------------------------


def option_paths(loaded: Loaded, option: str) -> list[list[int]]:
    """The token sequences that count as ``option``: its own tokens (no BOS, no special
    tokens), the first one replaced in turn by every token with the same text."""
    toks = loaded.llm.tokenize(option.encode("utf-8"), add_bos=False, special=False)
    if not toks:
        return [[]]
    return [[t] + toks[1:] for t in loaded.vocab_text().same_text(toks[0])]


def _option_logprobs(spec: ModelSpec, chats: list[Chat], options: list[str],
                     n_ctx: int | None) -> list[dict[str, float]]:
    import numpy as np

    loaded = load(spec.target, n_ctx)
    set_adapter(loaded, spec.lora, spec.lora_scale if spec.lora else 0.0)
    llm = loaded.llm
    options = list(dict.fromkeys(options))
    paths = {option: option_paths(loaded, option) for option in options}
    room = max((len(p) - 1 for ps in paths.values() for p in ps), default=0)
    prompts = fit_prompts(spec, loaded, chats, room, "the longest option")
    result = []
    for toks in prompts:
        first = log_softmax(prefill(llm, toks))
        row = {}
        for option in options:
            scores = []
            for path in paths[option]:
                lp = float(first[path[0]]) if path else 0.0
                llm.n_tokens = len(toks)  # back to the prompt: the next eval drops the last path's tokens
                for prev, tok in zip(path, path[1:]):  # teacher-force the rest of the option
                    llm.eval([prev])
                    lp += float(log_softmax(last_logits(llm))[tok])
                scores.append(lp)
            row[option] = float(np.logaddexp.reduce(scores))
        llm.n_tokens = len(toks)  # the cache holds exactly the prompt again
        result.append(row)
    return result


def option_logprobs(spec: ModelSpec, chats: list[Chat], options: list[str],
                    n_ctx: int | None = None) -> list[dict[str, float]]:
    """Per chat, {option: log p(the answer starts with option | chat)} (see the counting rule above).

    Each prompt is prefilled once, reusing the cached prefix of the previous one (a judge's
    constitution preamble), and every option is teacher-forced after it."""
    with _LOCK:
        return _option_logprobs(spec, chats, options, n_ctx)


# -- sampling --------------------------------------------------------------------------


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


def complete(loaded: Loaded, tokens: list[int], params: SamplingParams, sampler, name: str,
             on_text: Callable[[str], None] | None = None) -> Completion:
    """One completion of ``tokens``: decode until EOG, a stop string, max_tokens or a full context;
    ``on_text`` (if given) gets the text so far after every token."""
    import llama_cpp

    llm = loaded.llm
    vocab = llama_cpp.llama_model_get_vocab(llm._model.model)
    logits = prefill(llm, tokens)
    out: list[int] = []
    lps: list[dict[str, float]] | None = [] if params.logprobs else None
    chosen: list[float] = []  # with log-probs: the sampled tokens' own
    finish, text = "length", ""
    while len(out) < params.max_tokens:
        if llm.n_tokens >= loaded.n_ctx:
            break
        tok = llama_cpp.llama_sampler_sample(sampler, llm._ctx.ctx, -1)
        if lps is not None:
            logp = log_softmax(logits)
            lps.append(top_logprobs(loaded, logits, params.logprobs, logp))
        if llama_cpp.llama_vocab_is_eog(vocab, tok):
            finish = "stop"
            break
        out.append(tok)
        if lps is not None:
            chosen.append(float(logp[tok]))
        text, stopped = cut_at_stop(llm.detokenize(out).decode("utf-8", "replace"), params.stop)
        if on_text is not None:
            on_text(text)
        if stopped:
            finish = "stop"
            break
        llm.eval([tok])
        logits = last_logits(llm) if lps is not None else None
    return Completion(text=text, model=name, backend="llamacpp", finish_reason=finish,
                      prompt_tokens=len(tokens), completion_tokens=len(out), top_logprobs=lps,
                      token_logprobs=chosen if lps is not None else None, params=params.to_dict(),
                      token_ids=list(out) if lps is not None else None)
