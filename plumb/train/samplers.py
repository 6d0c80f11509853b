"""GRPO's samplers: G answers per prompt from the current policy, as ``Rollout``s (``rollouts.py``).

Three samplers give the loop the same thing — per completion its text, its
finish reason, and the token ids the trainer scores (prompt ids through the
chat template, completion ids with EOS appended when the answer stopped):

* ``HFSampler``: transformers ``generate`` on the policy being trained, LoRA and
  all (``plumb.train.generate.sample_batch``); the sampled ids are used as
  they are. The default on a GPU. Training's answers are seeded one by one,
  completion j of the step's group g by (step seed, g, j), so a group's
  answers do not depend on the rest of the batch or on which rank samples it.
* ``LlamaSampler``: llama.cpp through ``ctx.generate`` — the default on a CPU,
  where sampling dominates GRPO's time and llama.cpp decodes ~6x faster. After
  every policy update the LoRA is exported to ``OUT/adapter-step-N.gguf`` (a new
  path each time: llama.cpp caches adapters by path; the older files are
  deleted; under torchrun each rank exports its own, rank R > 0 into
  ``OUT/.rank-R/``) and swapped in on top of the base GGUF. llama.cpp
  returns text, so the trainer re-tokenizes ``prompt + completion`` exactly
  as training does (``data.tokenize``): the ratio and the KL use the
  trainer's own log-probs of those ids. A completion whose re-tokenization has another length than the
  sampler's token count (tokens merged or split differently) is counted
  (``sampling/retokenized_mismatch``) and trained on as re-tokenized: the same
  text, its canonical tokens. Every ``gap_every`` steps ``sampler_gap`` scores a
  few of the step's completions under llama.cpp itself (teacher-forced, through
  ``ctx.option_logprobs``, the same adapter) and reports
  |log pi_train(y) - log pi_sample(y)| / tokens, mean and max
  (``sampling/logp_gap_per_token/...``): the sampler/trainer mismatch the
  importance ratio would carry if it used the sampler's log-probs.
* ``ServerSampler``: a pool of OpenAI-compatible servers (``rollouts =
  "openai:URL,URL"``): after every update the LoRA is saved as a peft directory
  ``OUT/adapter-step-N/`` that the servers load by vLLM's runtime LoRA API
  (``plumb.serving``); the trainer scores the token ids the servers sampled
  (re-tokenized text where a server gives no ids), and the gap is measured on
  the servers' own log-probs of those tokens.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import replace
from pathlib import Path

from plumb.core.errors import PlumbError
from plumb.core.records import Chat, Completion, ModelSpec, SamplingParams
from plumb.train import data
from plumb.train.rollouts import Rollout

GAP_SAMPLES = 4  # completions scored when measuring the sampler/trainer gap


class HFSampler:
    """transformers ``generate`` on the live policy (no export, the sampled ids as they are)."""

    backend = "hf"

    def __init__(self, model, tokenizer, name: str):
        self.model, self.tok, self.name = model, tokenizer, name
        self.dirty = False

    def refresh(self, step: int) -> None:  # the policy samples itself: nothing to swap
        self.dirty = False

    def sample(self, chats: list[Chat], params: SamplingParams, groups: list[int] | None = None) -> list[Rollout]:
        """``groups`` (the step's global index of each chat): completion j of group g drawn from its own
        generator seeded by (seed, g, j), so a group's answers are the same whichever rank samples it and
        whatever else is in the batch; without, one seed for the whole call."""
        from plumb.train.generate import sample_batch

        seeds = None if groups is None or params.seed is None else \
            [random.Random(f"{params.seed}:{g}:{j}").getrandbits(63) for g in groups for j in range(params.n)]
        s = sample_batch(self.model, self.tok, chats, params, seeds)
        eos = self.tok.eos_token_id
        out = []
        for r, text in enumerate(s.texts):
            finish = s.finish_reasons[r]
            comp = Completion(text, self.name, "hf", finish, len(s.prompt_ids[r]), len(s.completion_ids[r]),
                              params=params.to_dict())
            out.append(Rollout(r // params.n, comp, s.prompt_ids[r],
                               s.completion_ids[r] + ([eos] if finish == "stop" else [])))
        return out


class TextSampler:
    """A sampler whose engine gives completions (llama.cpp, servers), not the trainer's tensors: each update
    exported where the engine loads it (``refresh``), answers drawn on ``spec`` (``draw``), and each turned into
    the ids the trainer scores (``sample``): the engine's own token ids where it gives them, else the trainer's
    re-tokenization of the text (``data.tokenize``), counted when its length differs from the sampler's."""

    backend = ""
    suffix = ""  # of the exported adapter's path

    def __init__(self, ctx, model, tokenizer, out: Path, dirty: bool, rank: int = 0):
        self.ctx, self.model, self.tok = ctx, model, tokenizer
        self.out = out if rank == 0 else out / f".rank-{rank}"  # each rank exports its own files
        self.lora: str | None = None  # None: the adapter is still zero, sample the base
        self.dirty = dirty

    @property
    def spec(self) -> ModelSpec:
        raise NotImplementedError

    def export(self, path: Path) -> None:
        """Write the current LoRA where the sampler's engine loads it from."""
        raise NotImplementedError

    def refresh(self, step: int) -> None:
        """Export the current LoRA to ``adapter-step-N`` if the policy changed since the last export (a new path
        each time: engines cache adapters by path or name), and delete the older ones."""
        if not self.dirty:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / f"adapter-step-{step}{self.suffix}"
        self.export(path)
        for old in self.out.glob(f"adapter-step-*{self.suffix}"):
            if old == path or old.suffix != self.suffix:
                continue
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink(missing_ok=True)
        self.lora, self.dirty = str(path), False

    def draw(self, chats: list[Chat], params: SamplingParams) -> list[list[Completion]]:
        return self.ctx.generate(self.spec, chats, params)

    def sample(self, chats: list[Chat], params: SamplingParams, groups: list[int] | None = None) -> list[Rollout]:
        """(completion j of every chat is seeded ``seed + j``, whatever the chat's place in the call: a group's
        answers do not depend on which rank samples it; ``groups`` is not needed.) A completion that carries its
        sampled token ids is trained on them, EOS appended when it stopped; the others on their text re-tokenized."""
        sampled = self.draw(chats, params)
        eos = self.tok.eos_token_id
        out = []
        for p, (chat, comps) in enumerate(zip(chats, sampled)):
            prompt_ids, answers, _ = data.tokenize(self.tok, chat.to_dicts(), [c.text for c in comps])
            for c, ids in zip(comps, answers):
                if c.token_ids is not None:
                    stop = c.finish_reason == "stop" and not (c.token_ids and c.token_ids[-1] == eos)
                    out.append(Rollout(p, c, prompt_ids, list(c.token_ids) + [eos] * stop))
                    continue
                if c.finish_reason != "stop":
                    ids = ids[:-1]  # cut off at max tokens: it did not choose to stop there
                n = len(ids) - (c.finish_reason == "stop")
                known = self.sampled_tokens(c)
                out.append(Rollout(p, c, prompt_ids, ids, None if known is None else n != known))
        return out

    def sampled_tokens(self, c: Completion) -> int | None:
        return c.completion_tokens


class LlamaSampler(TextSampler):
    """llama.cpp rollouts with the current LoRA exported to GGUF and swapped in after each update."""

    backend = "llamacpp"
    suffix = ".gguf"

    def __init__(self, ctx, model, tokenizer, base_gguf: str, base_dir: str, out: Path, dirty: bool, rank: int = 0):
        super().__init__(ctx, model, tokenizer, out, dirty, rank)
        self.base, self.base_dir = base_gguf, base_dir

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec("llamacpp", self.base, lora=self.lora)

    def export(self, path: Path) -> None:
        from plumb.export.lora_to_gguf import export_lora

        tmp = self.out / ".rollout-adapter"
        self.model.save_pretrained(tmp)
        export_lora(tmp, path, base_dir=self.base_dir)

    def gap(self, chats: list[Chat], rolls: list[Rollout], train_logps) -> dict[str, float]:
        """The gap on up to GAP_SAMPLES completions, each scored by llama.cpp teacher-forced."""
        picked = gap_candidates(rolls, self.tok)
        return sampler_gap(self.ctx, self.spec, chats, picked, train_logps(picked)) if picked else {}


class ServerSampler(TextSampler):
    """Rollouts from a pool of OpenAI-compatible servers (``openai:URL[,URL...][#MODEL]``): after each
    update the LoRA is saved as a peft directory, ``OUT/adapter-step-N/``, which every server that takes a
    request loads by vLLM's runtime LoRA API (``plumb.serving``; the servers must see the path). Every request
    asks for the sampled tokens' log-probs and ids (vLLM's ``return_tokens_as_token_ids``; ``plumb serve``
    answers it): the trainer scores exactly the tokens the server sampled, as TRL does with vLLM, and the gap
    is measured on the server's own log-probs of them. A server that gives no ids (llama_cpp.server) is
    re-tokenized as for llama.cpp."""

    backend = "openai"

    def __init__(self, ctx, model, tokenizer, target: str, out: Path, dirty: bool, rank: int = 0):
        super().__init__(ctx, model, tokenizer, out, dirty, rank)
        self.target = target

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec("openai", self.target, lora=str(Path(self.lora).resolve()) if self.lora else None)

    def export(self, path: Path) -> None:
        self.model.save_pretrained(path)

    def draw(self, chats: list[Chat], params: SamplingParams) -> list[list[Completion]]:
        from plumb.serving import openai_chat

        return openai_chat.generate(self.spec, chats, replace(params, logprobs=1), token_ids=True)

    def sampled_tokens(self, c: Completion) -> int | None:
        """Exact with log-probs (one per token); without, unknown (a server counts the tokens of all n choices
        together), and the completion is not counted either way."""
        return len(c.token_logprobs) if c.token_logprobs is not None else None

    def gap(self, chats: list[Chat], rolls: list[Rollout], train_logps) -> dict[str, float]:
        """|log pi_train(y) - log pi_sample(y)| per token on up to GAP_SAMPLES completions trained on the server's
        own token ids, or else whose re-tokenization has the server's token count (its log-probs then line up
        with the trainer's tokens; the EOS is in both sums when the server counts it, else in neither)."""
        picked, counts = [], []
        for r in rolls:
            k = len(r.completion.token_logprobs or [])
            n = len(r.ids) - (not r.truncated)
            if k and not r.mismatch and k in (n, len(r.ids)):
                picked.append(r)
                counts.append(k)
            if len(picked) == GAP_SAMPLES:
                break
        if not picked:
            return {}
        gaps = [abs(sum(lps[:k]) - sum(r.completion.token_logprobs)) / k
                for r, k, lps in zip(picked, counts, train_logps(picked))]
        return {"sampling/logp_gap_per_token/mean": sum(gaps) / len(gaps),
                "sampling/logp_gap_per_token/max": max(gaps)}


def base_gguf(policy_dir: str, out: Path, given: str | None) -> str:
    """The policy's base as a GGUF for llama.cpp: ``given``, the starter's own GGUF when the policy is
    the starter's HF copy, else an f16 export made once into the run directory."""
    if given:
        if not Path(given).is_file():
            raise PlumbError(f"base_gguf {given!r}: no such file.", exit_code=2)
        return given
    from plumb.models import starter

    try:
        if Path(policy_dir).resolve() == starter.hf_dir().resolve():
            return str(starter.gguf_path())
    except PlumbError:
        pass
    path = out / "base.f16.gguf"
    if not path.is_file():
        from plumb.export import export_gguf

        export_gguf(policy_dir, path, "f16")
    return str(path)


def gap_candidates(rolls: list[Rollout], tokenizer) -> list[Rollout]:
    """Up to GAP_SAMPLES completions whose text tokenizes alone exactly as the trainer scores it
    (llama.cpp teacher-forces the text on its own after the prompt)."""
    out = []
    for r in rolls:
        n = len(r.ids) - (not r.truncated)
        if r.completion.text and not r.mismatch and \
                tokenizer(r.completion.text, add_special_tokens=False)["input_ids"] == r.ids[:n]:
            out.append(r)
    return out[:GAP_SAMPLES]


def sampler_gap(ctx, spec: ModelSpec, chats: list[Chat], rolls: list[Rollout],
                train_logps: list[list[float]]) -> dict[str, float]:
    """|log pi_train(y) - log pi_sample(y)| per token of y, y scored by llama.cpp (the sampler, with the
    same adapter) and by the trainer on the same tokens; mean and max over the completions."""
    gaps = []
    for r, lps in zip(rolls, train_logps):
        n = len(r.ids) - (not r.truncated)  # the text's tokens: llama.cpp scores the text, not the EOS
        got = ctx.option_logprobs(spec, [chats[r.prompt]], [r.completion.text])
        if got:
            gaps.append(abs(sum(lps[:n]) - got[0][r.completion.text]) / n)
    if not gaps:
        return {}
    return {"sampling/logp_gap_per_token/mean": sum(gaps) / len(gaps),
            "sampling/logp_gap_per_token/max": max(gaps)}
