"""transformers generation: the library behind the ``hf`` backend plugin (``plumb.plugins.hf_generate``).

Used for models that have no GGUF yet and, through ``sample_batch``, by GRPO
to sample from the policy being trained (an already-loaded model, LoRA and
all). Prompts go through the tokenizer's own chat template, are padded on the
left so every row's answer starts at the same column, and are generated in
one batch with the KV cache on. The same ``SamplingParams`` as every backend:
n, temperature (0 = greedy), top_p, max_tokens, seed, stop strings, top-k
log-probs of each generated token (from the raw logits). With ``row_seeds``
(GRPO's rollouts) each row draws from a generator of its own (Gumbel-max over
the tempered, top-p-filtered logits: the same distribution), so a row's
sample does not depend on what else is in the batch.

``option_logprobs_with`` scores a judge's candidate answers without
sampling: log p(option | chat) teacher-forced, from batched forward passes
(rows right-padded) over each prompt followed by an option's tokens but the
last, so all the single-token options of a chat come from one row. The
counting rule is llama.cpp's (see plumb.llamacpp): the option is
tokenized on its own (no special tokens); its first token stands for every
vocabulary token with exactly the same text (decoded alone, special tokens
spelled out), each followed by the rest of the option's tokens, and their
probabilities are summed; a first token that is a piece of a character
(decodes to U+FFFD) counts alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from plumb.core.decoding import cut_at_stop
from plumb.core.errors import PlumbError
from plumb.core.records import Chat, Completion, SamplingParams


_LOADED: dict[str, tuple[Any, Any]] = {}


def load(target: str) -> tuple[Any, Any]:
    """Model and tokenizer for a local dir or hub id, cached per process, eval mode, fp32 on CPU."""
    if target in _LOADED:
        return _LOADED[target]
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(target)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        model = AutoModelForCausalLM.from_pretrained(target, dtype=dtype).to(device).eval()
    except OSError as exc:
        raise PlumbError(f"cannot load hf:{target}: {exc}. Pass a directory saved with save_pretrained "
                         "or a model id already in the Hugging Face cache.", exit_code=2) from None
    _LOADED[target] = (model, tokenizer)
    return model, tokenizer


@dataclass
class Samples:
    """A batch of samples: ``completion_ids[i]`` continues ``prompt_ids[i // n]``."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    texts: list[str]
    finish_reasons: list[str]
    top_logprobs: list[list[dict[str, float]]] | None


def encode_chats(tokenizer: Any, chats: list[Chat]) -> list[list[int]]:
    """Prompt ids through the tokenizer's chat template, generation prompt appended."""
    if not tokenizer.chat_template:
        raise PlumbError("the tokenizer has no chat template; plumb will not guess one.")
    texts = [tokenizer.apply_chat_template(c.to_dicts(), tokenize=False, add_generation_prompt=True) for c in chats]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


class RowSeeded:
    """A logits processor that samples with one seeded generator per row: the logits tempered and top-p
    filtered as ``generate`` would, plus Gumbel noise, whose argmax (greedy decoding) is a sample of their
    softmax. Each row draws from its own generator at every position, whatever the other rows are."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float, device: Any):
        import torch
        from transformers.generation.logits_process import TopPLogitsWarper

        self.gens = [torch.Generator(device).manual_seed(s) for s in seeds]
        self.temperature, self.top_p = temperature, TopPLogitsWarper(top_p) if top_p < 1.0 else None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        scores = scores.float() / self.temperature
        if self.top_p is not None:
            scores = self.top_p(input_ids, scores)
        u = torch.stack([torch.rand(scores.shape[-1], generator=g, device=scores.device) for g in self.gens])
        return scores - torch.log(-torch.log(u))


def sample_batch(model: Any, tokenizer: Any, chats: list[Chat], params: SamplingParams,
                 row_seeds: list[int] | None = None) -> Samples:
    """Sample ``params.n`` completions per chat from an already-loaded model in one ``generate`` call;
    ``row_seeds`` (one per completion, chat by chat) seeds each completion on its own (temperature > 0)."""
    import torch

    prompts = encode_chats(tokenizer, chats)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(p) for p in prompts)
    n_ctx = getattr(model.config, "max_position_embeddings", None)
    if n_ctx and width + 1 > n_ctx:
        raise PlumbError(f"a prompt is {width} tokens but the model takes at most {n_ctx}; shorten it.", exit_code=2)
    device = next(model.parameters()).device
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    if params.seed is not None:
        torch.manual_seed(params.seed)
    greedy = params.temperature <= 0
    eos = model.generation_config.eos_token_id or tokenizer.eos_token_id
    kwargs: dict[str, Any] = dict(
        max_new_tokens=params.max_tokens, do_sample=not greedy, num_return_sequences=params.n,
        pad_token_id=pad, eos_token_id=eos, use_cache=True, return_dict_in_generate=True,
        output_logits=bool(params.logprobs),
    )
    if row_seeds is not None and not greedy:  # each row its own sampler; generate itself decodes greedily
        from transformers import LogitsProcessorList

        if len(row_seeds) != len(prompts) * params.n:
            raise ValueError(f"{len(row_seeds)} row seeds for {len(prompts)} x {params.n} completions")
        ids, mask = ids.repeat_interleave(params.n, 0), mask.repeat_interleave(params.n, 0)
        kwargs.update(do_sample=False, num_return_sequences=1, temperature=None, top_p=None, top_k=None,
                      logits_processor=LogitsProcessorList([RowSeeded(row_seeds, params.temperature, params.top_p,
                                                                      device)]))
    elif not greedy:
        kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if params.stop:
        kwargs.update(stop_strings=list(params.stop), tokenizer=tokenizer)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    finally:
        model.train(was_training)
    eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
    new = out.sequences[:, width:].tolist()
    completion_ids, texts, reasons = [], [], []
    for row in new:
        cut = next((i for i, t in enumerate(row) if t in eos_ids), None)
        toks = row[:cut] if cut is not None else [t for t in row if t != pad]
        text, stopped = cut_at_stop(tokenizer.decode(toks, skip_special_tokens=False), params.stop)
        completion_ids.append(toks)
        texts.append(text)
        reasons.append("stop" if cut is not None or stopped else "length")
    lps = None
    if params.logprobs:
        logp = torch.stack(out.logits, dim=1).float().log_softmax(-1)  # (rows, steps, vocab)
        top = logp.topk(params.logprobs, dim=-1)
        lps = []
        for r, toks in enumerate(completion_ids):
            steps = min(len(toks) + 1, logp.shape[1])  # +1: the step that chose EOS
            lps.append([{tokenizer.decode([i]): float(v) for v, i in zip(top.values[r, s].tolist(),
                                                                       top.indices[r, s].tolist())}
                        for s in range(steps)])
    return Samples([p for p in prompts for _ in range(params.n)], completion_ids, texts, reasons, lps)


def generate_with(model: Any, tokenizer: Any, chats: list[Chat], params: SamplingParams,
                  name: str = "hf:policy", batch_size: int | None = None) -> list[list[Completion]]:
    """A backend's ``generate`` for an already-loaded model: one list of ``n`` Completions per chat."""
    batch_size = batch_size or int(os.environ.get("PLUMB_HF_BATCH", 8))
    result: list[list[Completion]] = []
    for start in range(0, len(chats), batch_size):
        part = chats[start:start + batch_size]
        s = sample_batch(model, tokenizer, part, params)
        for i in range(len(part)):
            rows = range(i * params.n, (i + 1) * params.n)
            result.append([
                Completion(text=s.texts[r], model=name, backend="hf", finish_reason=s.finish_reasons[r],
                           prompt_tokens=len(s.prompt_ids[r]), completion_tokens=len(s.completion_ids[r]),
                           top_logprobs=s.top_logprobs[r] if s.top_logprobs else None, params=params.to_dict())
                for r in rows])
    return result


# -- option log-probs ------------------------------------------------------------------


def vocab_texts(tokenizer: Any) -> list[str]:
    """Every token's text, decoded alone with special tokens spelled out (kept on the tokenizer)."""
    texts = getattr(tokenizer, "_plumb_vocab_texts", None)
    if texts is None:
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], skip_special_tokens=False,
                                       clean_up_tokenization_spaces=False)
        tokenizer._plumb_vocab_texts = texts
    return texts


def option_paths(tokenizer: Any, option: str) -> list[list[int]]:
    """The token sequences that count as ``option``: its own tokens, the first one replaced in
    turn by every token with the same text (only itself when it is a piece of a character)."""
    toks = tokenizer(option, add_special_tokens=False)["input_ids"]
    if not toks:
        return [[]]
    texts = vocab_texts(tokenizer)
    first = texts[toks[0]]
    same = [toks[0]] if "\ufffd" in first else [t for t, text in enumerate(texts) if text == first]
    return [[t] + toks[1:] for t in same]


def option_logprobs_with(model: Any, tokenizer: Any, chats: list[Chat], options: list[str],
                         batch_size: int | None = None) -> list[dict[str, float]]:
    """Per chat, {option: log p(the answer starts with option | chat)} from an already-loaded model.

    One row per distinct input (a chat's prompt + an option's tokens but the last): every
    single-token option of a chat is read from the same row."""
    import torch

    batch_size = batch_size or int(os.environ.get("PLUMB_HF_BATCH", 8))
    prompts = encode_chats(tokenizer, chats)
    options = list(dict.fromkeys(options))
    paths = {option: option_paths(tokenizer, option) for option in options}
    feeds = list(dict.fromkeys((c, tuple(path[:-1])) for c in range(len(chats)) for o in options
                               for path in paths[o] if path))
    n_ctx = getattr(model.config, "max_position_embeddings", None)
    longest = max((len(prompts[c]) + len(rest) for c, rest in feeds), default=0)
    if n_ctx and longest >= n_ctx:
        raise PlumbError(f"a prompt and its longest option are {longest + 1} tokens but the model takes at most "
                         f"{n_ctx}; shorten it.", exit_code=2)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    logp: dict[tuple[int, tuple[int, ...]], Any] = {}  # feed -> log-probs after each of its option positions
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(feeds), batch_size):
            part = feeds[start:start + batch_size]
            seqs = [prompts[c] + list(rest) for c, rest in part]
            width = max(len(s) for s in seqs)
            ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=device)
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
            # logits only where an option token is predicted: (rows, positions kept, vocabulary)
            keep = sorted({len(prompts[c]) - 1 + k for c, rest in part for k in range(len(rest) + 1)})
            column = {position: i for i, position in enumerate(keep)}
            with torch.no_grad():
                logits = model(input_ids=ids, attention_mask=mask,
                               logits_to_keep=torch.tensor(keep, device=device)).logits
            for r, (c, rest) in enumerate(part):
                at = [column[len(prompts[c]) - 1 + k] for k in range(len(rest) + 1)]
                logp[(c, rest)] = logits[r, at].double().log_softmax(-1).cpu()
    finally:
        model.train(was_training)
    result = []
    for c in range(len(chats)):
        row = {}
        for option in options:
            scores = [sum(float(logp[(c, tuple(path[:-1]))][k, tok]) for k, tok in enumerate(path))
                      for path in paths[option] if path]
            row[option] = float(torch.tensor(scores, dtype=torch.float64).logsumexp(0)) if scores else 0.0
        result.append(row)
    return result
