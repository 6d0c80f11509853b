"""Batched sampling for the llama.cpp backend: many completions decoded together.

``llamacpp.generate`` comes here when it samples (temperature > 0) more than
one sequence without log-probs. The n completions of several prompts advance
together, one token each per ``llama_decode``: a step reads the weights once,
runs one graph and synchronises llama.cpp's threads once for all of them
instead of once per sequence. How much that saves on a CPU depends on the
weights' type (types with batched matmul kernels gain most) and on how busy
the cores are (thread synchronisation costs most on shared cores); see
bench/bench_sampling.py.

* **A second context on the loaded weights** (``BatchContext``), made on
  first use and kept with the model: one unified KV cache of
  ``PLUMB_BATCH_CTX`` cells (default: the model's context size, never less)
  shared by up to ``MAX_SEQS`` sequences. The one-sequence context and its
  prefix cache are left alone.
* **Rounds that fit.** The completions to make are packed, prompt by prompt
  in order, into rounds whose worst case (every completion running to
  ``max_tokens``) fits the cells; a prompt's n completions may span rounds.
* **Prompts evaluated once per round.** Each prompt is prefilled into its
  first completion's sequence, reusing the longest common prefix with an
  earlier prompt of the round (a shared system prompt or constitution
  preamble) by ``llama_memory_seq_cp``; the prompt's cells are then shared
  with its other completions (``seq_cp`` again: the unified cache tags the
  same cells with several sequence ids, nothing is copied).
* **One sampler chain per completion**: completion j of every prompt is
  seeded with ``seed + j`` (unseeded: llama.cpp's random seed), so a seeded
  completion does not depend on what else is in the batch or round (up to
  last-bit differences in the logits, which batch shapes can cause). Each
  sequence stops on its own at an end-of-generation token, a stop string,
  ``max_tokens`` or the model's context size, with the finish reasons and
  token counts of the one-sequence path.
* **Log-probs** (``params.logprobs``), read off each step's logits as the
  one-sequence path does: the top-k of every step, the sampled tokens' own and
  their ids.

Seeded samples differ from the one-sequence path's, which draws all the
samples of a call from one sampler seeded once. Greedy decoding stays on the
one-sequence path; forced through here (``generate(..., batched=True)``) it
gives the same text on the tests' models, though the logits of the two paths
can differ in the last bits.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from plumb.core.decoding import common_prefix, cut_at_stop
from plumb.core.errors import PlumbError
from plumb.core.records import Completion, SamplingParams
from plumb.llamacpp.model import Loaded, apply_lora, cpu_threads, log_softmax, make_sampler, top_logprobs

MAX_SEQS = 64  # sequences decoded together at most
PREFILL_BATCH = 512  # prompt tokens per llama_decode call


class BatchContext:
    """A llama.cpp context for many sequences on an already-loaded model (its own KV cache and adapters)."""

    def __init__(self, loaded: Loaded, cells: int, seqs: int = MAX_SEQS):
        import llama_cpp

        from plumb.export.quantize import captured_stderr

        seqs = min(seqs, llama_cpp.llama_max_parallel_sequences())
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = cells
        params.n_batch = params.n_ubatch = max(min(PREFILL_BATCH, cells), seqs)
        params.n_seq_max = seqs
        params.kv_unified = True  # one cache: a prompt's cells serve all its sequences
        params.n_threads = params.n_threads_batch = cpu_threads()
        params.no_perf = True
        with captured_stderr() as log:
            ctx = llama_cpp.llama_init_from_model(loaded.llm._model.model, params)
        if not ctx:
            tail = " ".join(log.read_text(errors="replace").splitlines()[-3:]).strip()
            raise PlumbError(f"llama.cpp could not make a {cells}-token context for {seqs} sequences on "
                             f"{loaded.path}: {tail} Lower PLUMB_BATCH_CTX.")
        self.ctx = ctx
        self.memory = llama_cpp.llama_get_memory(ctx)
        self.cells = llama_cpp.llama_n_ctx(ctx)
        self.seqs = seqs
        self.n_batch = params.n_batch
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self.active: tuple[str | None, float] = (None, 0.0)
        self.threads = cpu_threads()
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="plumb-sample") if self.threads > 1 else None

    def follow_adapter(self, loaded: Loaded) -> None:
        """Apply the adapter (and scale) the model's main context has."""
        if self.active != loaded.active:
            lora, scale = loaded.active
            apply_lora(self.ctx, loaded.adapters[lora] if lora else None, scale, lora)
            self.active = loaded.active

    def decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """Decode (token, position, sequence id, wants logits) entries as one batch."""
        import llama_cpp

        b = self.batch
        for k, (tok, pos, seq, logits) in enumerate(entries):
            b.token[k], b.pos[k], b.n_seq_id[k], b.logits[k] = tok, pos, 1, logits
            b.seq_id[k][0] = seq
        b.n_tokens = len(entries)
        rc = llama_cpp.llama_decode(self.ctx, b)
        if rc != 0:
            raise PlumbError(f"llama.cpp could not decode a batch of {len(entries)} tokens (code {rc}).")

    def sample(self, samplers: list[Any], index: list[int]) -> list[int]:
        """Draw a token from each sampler, from the logits at its batch index, the samplers
        split over the threads (llama.cpp's sampler runs without Python's lock)."""
        import llama_cpp

        def draw(part: range) -> list[int]:
            return [llama_cpp.llama_sampler_sample(samplers[i], self.ctx, index[i]) for i in part]

        if self.pool is None or len(samplers) < 2:
            return draw(range(len(samplers)))
        llama_cpp.llama_get_logits(self.ctx)  # puts the outputs in batch order once, before the threads read them
        parts = [range(len(samplers))[k::self.threads] for k in range(self.threads)]
        tokens = [0] * len(samplers)
        for part, drawn in zip(parts, self.pool.map(draw, parts)):
            for i, tok in zip(part, drawn):
                tokens[i] = tok
        return tokens

    def logits(self, index: int, n_vocab: int):
        """The logits at batch index ``index`` (a view, valid until the next decode)."""
        import llama_cpp
        import numpy as np

        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.ctx, index), shape=(n_vocab,))

    def close(self) -> None:
        import llama_cpp

        if self.pool is not None:
            self.pool.shutdown()
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.ctx)


def batch_context(loaded: Loaded) -> BatchContext:
    """The model's batch context, made on first use: $PLUMB_BATCH_CTX cells, at least the model's context."""
    if loaded.batch is None:
        cells = max(int(os.environ.get("PLUMB_BATCH_CTX") or 0), loaded.n_ctx)
        loaded.batch = BatchContext(loaded, cells)
    return loaded.batch


# -- planning rounds ----------------------------------------------------------------------


@dataclass
class Part:
    """Completions ``samples`` of prompt ``prompt`` in one round; its first ``common`` prompt
    tokens are copied from the sequence of the round's part ``source`` (None: prefilled in full)."""

    prompt: int
    samples: range
    source: int | None = None
    common: int = 0


def plan(prompts: list[list[int]], n: int, max_tokens: int, n_ctx: int, cells: int, seqs: int) -> list[list[Part]]:
    """Pack the n completions of every prompt, in order, into rounds whose worst case fits ``cells``."""
    rounds: list[list[Part]] = []
    parts: list[Part] = []
    used = 0
    for i, toks in enumerate(prompts):
        # cells a completion adds at most: its tokens but the last, which is never decoded
        per_seq = max(min(max_tokens, n_ctx - len(toks)) - 1, 0)
        j = 0
        while j < n:
            shared = [(common_prefix(toks, prompts[p.prompt]), k) for k, p in enumerate(parts)]
            common, source = max(shared, default=(0, None))
            common = min(common, len(toks) - 1)  # evaluate at least the last prompt token, for its logits
            fresh = len(toks) - common
            fit = (cells - used - fresh) // per_seq if per_seq else n
            take = min(n - j, seqs - sum(len(p.samples) for p in parts), fit)
            if take <= 0:
                if not parts:
                    raise PlumbError(f"a prompt of {len(toks)} tokens does not fit a batch context of {cells} cells.")
                rounds.append(parts)
                parts, used = [], 0
                continue
            parts.append(Part(i, range(j, j + take), source if common else None, common))
            used += fresh + take * per_seq
            j += take
    if parts:
        rounds.append(parts)
    return rounds


# -- decoding ---------------------------------------------------------------------------------


@dataclass
class Sequence:
    """One completion being decoded."""

    prompt: int
    sample: int
    seq_id: int
    n_prompt: int
    sampler: Any
    out: list[int] = field(default_factory=list)
    top: list[dict[str, float]] = field(default_factory=list)  # with log-probs: each step's top-k
    chosen: list[float] = field(default_factory=list)  # with log-probs: each sampled token's own
    raw: bytes = b""
    text: str = ""
    finish: str | None = None


def sample_batched(loaded: Loaded, prompts: list[list[int]], params: SamplingParams,
                   name: str) -> list[list[Completion]]:
    """``params.n`` completions per prompt, decoded together (the caller holds the model's lock
    and has set its adapter)."""
    bc = batch_context(loaded)
    bc.follow_adapter(loaded)
    results: list[list[Completion | None]] = [[None] * params.n for _ in prompts]
    lps = bool(params.logprobs)
    for parts in plan(prompts, params.n, params.max_tokens, loaded.n_ctx, bc.cells, bc.seqs):
        for s in run_round(bc, loaded, prompts, parts, params):
            results[s.prompt][s.sample] = Completion(
                text=s.text, model=name, backend="llamacpp", finish_reason=s.finish or "length",
                prompt_tokens=s.n_prompt, completion_tokens=len(s.out), params=params.to_dict(),
                top_logprobs=s.top if lps else None, token_logprobs=s.chosen if lps else None,
                token_ids=list(s.out) if lps else None)
    return results  # type: ignore[return-value]


def run_round(bc: BatchContext, loaded: Loaded, prompts: list[list[int]], parts: list[Part],
              params: SamplingParams) -> list[Sequence]:
    """Prefill the round's prompts, then decode all its sequences step by step until each stops."""
    import llama_cpp

    llm = loaded.llm
    vocab = llama_cpp.llama_model_get_vocab(llm._model.model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)

    def advance(s: Sequence, tok: int, index: int) -> None:
        """Take ``s``'s next token (drawn from the logits at batch ``index``); stop it if it is done."""
        eog = llama_cpp.llama_vocab_is_eog(vocab, tok)
        if params.logprobs:
            logits = bc.logits(index, n_vocab)
            logp = log_softmax(logits)
            s.top.append(top_logprobs(loaded, logits, params.logprobs, logp))
            if not eog:
                s.chosen.append(float(logp[tok]))
        if eog:
            s.finish = "stop"
            return
        s.out.append(tok)
        s.raw += llm.detokenize([tok])
        s.text, stopped = cut_at_stop(s.raw.decode("utf-8", "replace"), params.stop)
        if stopped:
            s.finish = "stop"
        elif len(s.out) >= params.max_tokens or s.n_prompt + len(s.out) >= loaded.n_ctx:
            s.finish = "length"

    llama_cpp.llama_memory_clear(bc.memory, True)
    seqs: list[Sequence] = []
    homes: list[int] = []  # per part: the sequence holding its prompt
    try:
        for part in parts:
            toks = prompts[part.prompt]
            home = len(seqs)
            if part.source is not None:
                llama_cpp.llama_memory_seq_cp(bc.memory, homes[part.source], home, 0, part.common)
            rest = list(range(part.common, len(toks)))
            for start in range(0, len(rest), bc.n_batch):
                chunk = rest[start:start + bc.n_batch]
                bc.decode([(toks[p], p, home, p == len(toks) - 1) for p in chunk])
            homes.append(home)
            new = []
            for j in part.samples:
                s = Sequence(part.prompt, j, len(seqs), len(toks),
                             make_sampler(params, None if params.seed is None else params.seed + j))
                seqs.append(s)
                new.append(s)
                if s.seq_id != home:
                    llama_cpp.llama_memory_seq_cp(bc.memory, home, s.seq_id, -1, -1)
            if params.max_tokens > 0:  # every completion's first token, from the prompt's last logits
                for s, tok in zip(new, bc.sample([s.sampler for s in new], [len(chunk) - 1] * len(new))):
                    advance(s, tok, len(chunk) - 1)
            else:
                for s in new:
                    s.finish = "length"
        while True:
            live = [s for s in seqs if s.finish is None]
            if not live:
                return seqs
            bc.decode([(s.out[-1], s.n_prompt + len(s.out) - 1, s.seq_id, True) for s in live])
            for i, (s, tok) in enumerate(zip(live, bc.sample([s.sampler for s in live], list(range(len(live)))))):
                advance(s, tok, i)
    finally:
        for s in seqs:
            llama_cpp.llama_sampler_free(s.sampler)
