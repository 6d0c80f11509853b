"""Training data: chat template, tokenization as TRL does it, and collators.

Tokenization follows TRL's DPO (``trl/trainer/dpo_trainer.py``, after the
refactor in PR #3906):

* the prompt messages go through the model's chat template with
  ``add_generation_prompt=True``, rendered once as text;
* an answer's ids are ``tok(prompt_text + answer)[len(prompt_ids):]`` and EOS is
  appended. Where the prompt ids are not a prefix of the prompt+answer ids
  (tokens merging across the boundary) the completion starts where the two
  diverge, as in TRL, and a warning says how many rows that touched;
* a row is cut to ``max_length`` keeping the answer: the prompt loses tokens
  from its left end first (down to a floor of ``max_length // 4`` tokens), and
  only then is the answer cut from the right; rows whose prompt alone fills
  ``max_length`` are dropped; both are counted in ``Prepared.counts``.

The pair collator stacks ``[all chosen; all rejected]`` for one forward, pads
right, and returns a completion mask that is 0 on prompt and padding. The loop
uses by default ``collate_shared``, which gives the same log-probs from one row
per pair with the prompt computed once (see there).
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable

from plumb.core.decoding import common_prefix
from plumb.core.errors import PlumbError


@dataclass
class Example:
    """One tokenized row. ``answers`` holds (chosen, rejected) for pairs and
    (completion,) for sft/kto; ``kl`` is KTO's mismatched completion."""

    prompt: list[int]
    answers: tuple[list[int], ...]
    label: bool | None = None
    kl: list[int] | None = None

    @property
    def tokens(self) -> int:
        return sum(len(self.prompt) + len(a) for a in self.answers)


@dataclass
class Prepared:
    examples: list[Example]
    counts: dict[str, int] = field(default_factory=dict)


# -- rows in, messages + answers out -----------------------------------------------


def _messages(row: Any) -> list[dict[str, str]]:
    prompt = getattr(row, "prompt", None)
    if prompt is not None and hasattr(prompt, "to_dicts"):  # a plumb.core.records.Pair
        return prompt.to_dicts()
    if isinstance(row, dict):
        value = row.get("messages", row.get("prompt"))
        if isinstance(value, str):
            return [{"role": "user", "content": value}]
        if isinstance(value, list) and value:
            return [{"role": m["role"], "content": m["content"]} for m in value]
    raise PlumbError(f"a training row has no prompt: {str(row)[:120]!r}", exit_code=2)


def _field(row: Any, name: str) -> Any:
    value = row.get(name) if isinstance(row, dict) else getattr(row, name, None)
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        value = value[0].get("content")  # TRL's conversational shape: [{"role": "assistant", ...}]
    return value


def prompt_text(tokenizer, messages: list[dict[str, str]]) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise PlumbError(
            "the model's tokenizer has no chat template, so prompts cannot be rendered the way the model "
            "will see them when served. Use an instruct/chat model, or add a chat_template to its "
            "tokenizer_config.json.", exit_code=2,
        )
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


# -- tokenization ---------------------------------------------------------------


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def tokenize(tokenizer, messages: list[dict[str, str]], answers: Iterable[str]) -> tuple[list[int], list[list[int]], bool]:
    """Prompt ids and one id list per answer (EOS appended); the flag says whether
    the prompt ids were a prefix of every prompt+answer."""
    text = prompt_text(tokenizer, messages)
    prompt_ids = _ids(tokenizer, text)
    fulls = [_ids(tokenizer, text + a) for a in answers]
    keep = min(common_prefix(prompt_ids, f) for f in fulls)
    eos = tokenizer.eos_token_id
    outs = []
    for f in fulls:
        ids = f[keep:]
        if not ids or ids[-1] != eos:
            ids = ids + [eos]
        outs.append(ids)
    return prompt_ids[:keep], outs, keep == len(prompt_ids)


def _fit(prompt: list[int], answers: list[list[int]], max_length: int) -> tuple[list[int], list[list[int]], bool]:
    longest = max(len(a) for a in answers)
    if len(prompt) + longest <= max_length:
        return prompt, answers, False
    keep = max(max_length - longest, min(len(prompt), max_length // 4), 1)
    prompt = prompt[len(prompt) - keep:]
    room = max_length - len(prompt)
    return prompt, [a[:room] for a in answers], True


def prepare(rows: list[Any], tokenizer, method: str, max_length: int) -> Prepared:
    """Tokenize rows for ``method``; drop and count what cannot train."""
    counts = {"rows": len(rows), "same_answers": 0, "prompt_too_long": 0, "truncated": 0,
              "not_prefix": 0, "empty": 0}
    out: list[Example] = []
    for row in rows:
        messages = _messages(row)
        label = None
        if method in ("dpo", "ipo", "hinge", "orpo"):
            chosen, rejected = _field(row, "chosen"), _field(row, "rejected")
            if not isinstance(chosen, str) or not isinstance(rejected, str):
                raise PlumbError(f"{method} needs prompt/chosen/rejected rows; got {str(row)[:120]!r}", exit_code=2)
            if chosen.strip() == rejected.strip():
                counts["same_answers"] += 1
                continue
            texts = [chosen, rejected]
        else:
            completion = _field(row, "completion")
            if completion is None and method == "sft":
                completion = _field(row, "chosen")  # SFT on a pair trains on its chosen answer
            if not isinstance(completion, str):
                raise PlumbError(f"{method} needs prompt/completion rows; got {str(row)[:120]!r}", exit_code=2)
            if method == "kto":
                label = _field(row, "label")
                if not isinstance(label, bool):
                    raise PlumbError(f"kto needs a true/false 'label' on every row; got {str(row)[:120]!r}",
                                     exit_code=2)
            texts = [completion]
        if not all(t.strip() for t in texts):
            counts["empty"] += 1
            continue
        prompt, answers, is_prefix = tokenize(tokenizer, messages, texts)
        counts["not_prefix"] += not is_prefix
        if len(prompt) >= max_length:
            counts["prompt_too_long"] += 1
            continue
        prompt, answers, cut = _fit(prompt, answers, max_length)
        counts["truncated"] += cut
        out.append(Example(prompt, tuple(answers), label))
    if counts["not_prefix"]:
        warnings.warn(
            f"{counts['not_prefix']} row(s): the tokenized prompt is not a prefix of prompt+answer (tokens merge "
            "across the boundary); their completion starts where the two diverge, as in TRL."
        )
    return Prepared(out, counts)


def is_pairs(rows: list[Any]) -> bool:
    row = rows[0] if rows else None
    return row is not None and _field(row, "chosen") is not None and _field(row, "rejected") is not None


def check_data(prepared: Prepared, method: str, what: str = "training data") -> None:
    """Raise a PlumbError that says why when nothing is left to train on."""
    c = prepared.counts
    if prepared.examples:
        return
    if not c["rows"]:
        raise PlumbError(
            f"the {what} is empty: {method} needs "
            + ("prompt/chosen/rejected pairs" if method not in ("kto", "sft") else "prompt/completion rows")
            + ". Import some with `plumb data import FILE.jsonl`, or pass --data FILE.jsonl.", exit_code=2)
    reasons = [f"{n} {k.replace('_', ' ')}" for k, n in c.items() if k not in ("rows", "truncated") and n]
    raise PlumbError(
        f"no usable rows in the {what}: all {c['rows']} were dropped ({', '.join(reasons)}). "
        "'same answers' means chosen == rejected (the pair teaches nothing); 'prompt too long' means the "
        "prompt alone fills --max-length (raise it).", exit_code=2)


# -- batching ---------------------------------------------------------------------------


def groups(n: int, batch_size: int, seed: int, shuffle: bool = True) -> list[list[int]]:
    """Fixed micro-batches of indices (a seeded shuffle, then chunks). The batches keep
    their members across epochs — KTO's mismatched KL completions are drawn from
    the batch itself — and only their order changes per epoch (``epoch_order``)."""
    idx = list(range(n))
    if shuffle:
        random.Random(seed).shuffle(idx)
    return [idx[i:i + batch_size] for i in range(0, n, batch_size)]


def epoch_order(n_groups: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    order = list(range(n_groups))
    if shuffle and epoch > 0:
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def assign_kl(examples: list[Example], batches: list[list[int]]) -> None:
    """KTO: give each example the completion of its predecessor in its batch
    (rotate by one, as TRL does), for the mismatched-pair KL estimate."""
    for batch in batches:
        comps = [examples[i].answers[0] for i in batch]
        rotated = [comps[-1]] + comps[:-1]
        for i, c in zip(batch, rotated):
            examples[i].kl = c


def _targets(ids, comp):
    """Where each answer token is predicted from: flat (source position, label, row)."""
    mask = comp[:, 1:].bool()
    rows, cols = mask.nonzero(as_tuple=True)
    return {"src": rows * ids.shape[1] + cols, "labels": ids[:, 1:][mask], "owner": rows}


def collate(seqs: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, Any]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``completion_mask`` for
    (prompt, completion) id lists; the mask is 1 only on completion tokens.
    ``src``/``labels``/``owner`` list each answer token's predicting position
    (flattened), its id and its row: the shifted, masked labels of TRL."""
    import torch

    width = max(len(p) + len(c) for p, c in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    comp = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (p, c) in enumerate(seqs):
        n = len(p) + len(c)
        ids[i, :n] = torch.tensor(p + c, dtype=torch.long)
        attn[i, :n] = 1
        comp[i, len(p):n] = 1
    return {"input_ids": ids, "attention_mask": attn, "completion_mask": comp, **_targets(ids, comp),
            "rows": len(seqs)}


def collate_pairs(examples: list[Example], pad_id: int) -> dict[str, Any]:
    """TRL's layout: ``[chosen_1..chosen_B; rejected_1..rejected_B]`` in one padded batch."""
    return collate([(e.prompt, e.answers[0]) for e in examples] + [(e.prompt, e.answers[1]) for e in examples],
                   pad_id)


def collate_shared(examples: list[Example], pad_id: int) -> dict[str, Any]:
    """The same log-probs from one row per pair: ``prompt + chosen + rejected``.

    The rejected answer gets the positions it would have right after the prompt
    and a 4D mask that lets it see the prompt but not the chosen answer, so the
    prompt is computed once per pair instead of twice and rows pad far less
    (chosen answers are often much shorter than rejected ones). Outputs keep
    the ``[chosen; rejected]`` order: ``owner`` is i for chosen_i, B+i for rejected_i.
    """
    import torch

    b = len(examples)
    width = max(len(e.prompt) + len(e.answers[0]) + len(e.answers[1]) for e in examples)
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    pos = torch.zeros((b, width), dtype=torch.long)
    allowed = torch.eye(width, dtype=torch.bool).repeat(b, 1, 1)  # padding attends to itself only
    src, labels, owner = [], [], []
    for i, e in enumerate(examples):
        p, c, r = len(e.prompt), len(e.answers[0]), len(e.answers[1])
        ids[i, :p + c + r] = torch.tensor(e.prompt + e.answers[0] + e.answers[1], dtype=torch.long)
        pos[i, :p + c] = torch.arange(p + c)
        pos[i, p + c:p + c + r] = torch.arange(p, p + r)
        causal = torch.ones(p + c + r, p + c + r, dtype=torch.bool).tril()
        causal[p + c:, p:p + c] = False  # rejected never sees chosen
        allowed[i, :p + c + r, :p + c + r] = causal
        for k, (start, n, row) in enumerate(((p, c, i), (p + c, r, b + i))):
            prev = torch.arange(start - 1, start + n - 1)
            prev[0] = p - 1  # both answers are predicted from the end of the prompt
            src.append(i * width + prev)
            labels.append(ids[i, start:start + n])
            owner.append(torch.full((n,), row, dtype=torch.long))
    return {"input_ids": ids, "position_ids": pos, "attention_mask": allowed[:, None], "src": torch.cat(src),
            "labels": torch.cat(labels), "owner": torch.cat(owner), "rows": 2 * b}
