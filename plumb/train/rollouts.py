"""GRPO's rollouts: what a sampled answer is (``Rollout``), the trainer's batches of them, their rewards, and
the file they are written to. The samplers that make them are in ``samplers.py``.

``batch_of`` turns rollouts into the trainer's batch: the G answers to a prompt
share one row, ``prompt + answer_1 + ... + answer_G`` under a 4D mask, so the
prompt is computed once per group (the same log-probs as one row per answer;
a test checks it). ``score`` runs every verifier on each completion (``ctx.reward``: batched,
sandboxed where code runs) against its task and against each constitution
check, and combines the weighted ones; ``RolloutLog`` appends one JSON line
per completion to ``OUT/rollouts.jsonl``, which the train stage ingests into
the store after the run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from plumb.core.records import Chat, Completion, Reward, SamplingParams, Task
from plumb.core.rewards import combine
from plumb.train import data
from plumb.train.logps import HeadLogps, _plain_head, completion_logps


@dataclass
class Rollout:
    prompt: int  # index into the chats of the call
    completion: Completion
    prompt_ids: list[int]
    ids: list[int]  # what the trainer scores: completion ids, EOS appended when it stopped
    mismatch: bool | None = False  # re-tokenized text has another length than the sampler's tokens (None: unknown)

    @property
    def truncated(self) -> bool:
        return self.completion.finish_reason != "stop"


def task_of(row: dict[str, Any]) -> Task:
    """A training row (messages + the task fields of ``plumb data import``) as a Task."""
    messages = data._messages(row)
    return Task(Chat.from_dicts(messages), row.get("tests"), row.get("answer"), row.get("schema"),
                dict(row.get("meta") or {}))


def gather(world, mine: list[int], rolls: list[Rollout],
           scored: list[Scored]) -> tuple[list[Rollout], list[Scored]]:
    """Every rank's rollouts and rewards of a step, on every rank, in the one-process order (group by group,
    each group's answers in its sampler's order); a rollout's ``prompt`` becomes its global group index
    (``mine``: this rank's groups, the chats of its sample call in order). One all_gather of a few kB."""
    by_group: dict[int, list[tuple[Rollout, Scored]]] = {}
    for groups, rs, ss in world.gather((mine, rolls, scored)):
        for r, s in zip(rs, ss):
            by_group.setdefault(groups[r.prompt], []).append((replace(r, prompt=groups[r.prompt]), s))
    pairs = [x for g in sorted(by_group) for x in by_group[g]]
    return [r for r, _ in pairs], [s for _, s in pairs]


# -- rollouts as the trainer's batches ---------------------------------------------------------------


def token_logps(model, batch: dict[str, Any], temperature: float = 1.0) -> torch.Tensor:
    """Per-token log-probs of the completion tokens at ``temperature`` (logits / T, as TRL)."""
    if temperature == 1.0:
        return completion_logps(model, batch)[2]
    base = model.get_base_model()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    if _plain_head(base):
        hidden = base.get_decoder()(**inputs, use_cache=False).last_hidden_state
        flat = hidden.reshape(-1, hidden.shape[-1])[batch["src"]] / temperature
        return HeadLogps.apply(flat, base.get_output_embeddings().weight, batch["labels"])
    logits = model(**inputs, use_cache=False).logits
    logits = logits.reshape(-1, logits.shape[-1])[batch["src"]].float() / temperature
    return logits.gather(-1, batch["labels"][:, None]).squeeze(-1) - logits.logsumexp(-1)


def collate_groups(groups: list[tuple[list[int], list[list[int]]]], pad_id: int) -> dict[str, Any]:
    """One row per prompt, ``prompt + answer_1 + ... + answer_k``: each answer sees the prompt and itself
    (a 4D mask) at the positions it would have right after the prompt, so a group's prompt is computed
    once instead of G times (``data.collate_shared`` for G answers). ``owner`` numbers the answers in order."""
    width = max(len(p) + sum(map(len, answers)) for p, answers in groups)
    ids = torch.full((len(groups), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(groups), width), dtype=torch.long)
    allowed = torch.eye(width, dtype=torch.bool).repeat(len(groups), 1, 1)  # padding attends to itself only
    src, labels, owner = [], [], []
    for i, (p, answers) in enumerate(groups):
        n_p = len(p)
        ids[i, :n_p + sum(map(len, answers))] = torch.tensor(p + [t for a in answers for t in a], dtype=torch.long)
        pos[i, :n_p] = torch.arange(n_p)
        allowed[i, :n_p, :n_p] = torch.ones(n_p, n_p, dtype=torch.bool).tril()
        start = n_p
        for a in answers:
            n = len(a)
            pos[i, start:start + n] = torch.arange(n_p, n_p + n)
            allowed[i, start:start + n, :n_p] = True
            allowed[i, start:start + n, start:start + n] = torch.ones(n, n, dtype=torch.bool).tril()
            prev = torch.arange(start - 1, start + n - 1)
            prev[0] = n_p - 1  # every answer is predicted from the end of the prompt
            src.append(i * width + prev)
            labels.append(ids[i, start:start + n])
            owner.append(torch.full((n,), len(owner), dtype=torch.long))
            start += n
    return {"input_ids": ids, "position_ids": pos, "attention_mask": allowed[:, None], "src": torch.cat(src),
            "labels": torch.cat(labels), "owner": torch.cat(owner), "rows": len(owner)}


def batch_of(model, rolls, pad_id: int, device: str) -> dict[str, Any]:
    """The rollouts as one batch: answers to the same prompt share one row where the model's attention takes a
    custom 4D mask (sdpa), else one right-padded row each (``data.collate``)."""
    if getattr(model.get_base_model().config, "_attn_implementation", None) == "sdpa":
        groups: list[tuple[list[int], list[list[int]]]] = []
        for r in rolls:
            if groups and groups[-1][0] == r.prompt_ids:
                groups[-1][1].append(r.ids)
            else:
                groups.append((r.prompt_ids, [r.ids]))
        b = collate_groups(groups, pad_id)
    else:
        b = data.collate([(r.prompt_ids, r.ids) for r in rolls], pad_id)
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in b.items()}


def row_logps(model, rolls, pad_id, device, temperature) -> list[list[float]]:
    """Per rollout, the trainer's log-prob of each of its tokens (no grad)."""
    batch = batch_of(model, rolls, pad_id, device)
    tok = token_logps(model, batch, temperature).float().cpu()
    owner = batch["owner"].cpu()
    return [tok[owner == i].tolist() for i in range(len(rolls))]


# -- rewards -----------------------------------------------------------------------------------


@dataclass
class Scored:
    """One completion's rewards: (check principle or None, reward) for every verifier that applied."""

    rewards: list[tuple[str | None, Reward]]
    reward: float  # the weighted reward; NaN when no weighted verifier applied
    passed: bool  # every weighted verifier that applied scored >= 1

    def values(self, names: set[str] | None = None, exclude: set[str] = frozenset()) -> dict[str, float]:
        return {(f"{p}/{r.name}" if p else r.name): r.value for p, r in self.rewards
                if r.status == "ok" and r.name not in exclude and (names is None or r.name in names)}


def score(ctx, tasks: list[Task], completions: list[Completion], weights: dict[str, float],
          checks: list[dict[str, Any]]) -> list[Scored]:
    """Every applicable verifier on each (task, completion), plus each constitution check, in one
    batched ``ctx.reward`` call; the weighted sum by ``rewards.combine``."""
    specs = [{"verifier": c["verifier"], "params": dict(c.get("params", {}))} for c in checks]
    all_tasks = list(tasks) + [Task(t.prompt, meta={"check": spec}) for t in tasks for spec in specs]
    all_comps = list(completions) + [c for c in completions for _ in specs]
    got = ctx.reward(all_tasks, all_comps) if all_tasks else []
    out = []
    for i in range(len(completions)):
        rewards: list[tuple[str | None, Reward]] = [(None, r) for r in got[i]]
        for k, c in enumerate(checks):
            rewards += [(c.get("principle") or "check", r) for r in got[len(completions) + i * len(checks) + k]]
        weighted = [r for _, r in rewards if r.name in weights]
        value = combine([r for _, r in rewards], weights) if weighted else math.nan
        passed = bool(weighted) and all(r.status == "ok" and r.value >= 1.0 for r in weighted)
        out.append(Scored(rewards, value, passed))
    return out


def reward_metrics(scored: list[Scored], prefix: str = "") -> dict[str, float]:
    """TRL's per-verifier ``rewards/NAME/mean`` (ok rewards only), errors and unscored counts."""
    sums: dict[str, list[float]] = {}
    errors = 0
    for s in scored:
        for principle, r in s.rewards:
            if r.status != "ok":
                errors += 1
                continue
            key = f"{principle}/{r.name}" if principle else r.name
            sums.setdefault(key, []).append(r.value)
    out = {f"{prefix}rewards/{k}/mean": sum(v) / len(v) for k, v in sums.items()}
    out[f"{prefix}rewards/errors"] = float(errors)
    out[f"{prefix}rewards/unscored"] = float(sum(math.isnan(s.reward) for s in scored))
    scorable = [s for s in scored if not math.isnan(s.reward)]
    out[f"{prefix}pass_rate"] = sum(s.passed for s in scorable) / len(scorable) if scorable else 0.0
    return out


# -- the rollouts file ----------------------------------------------------------------------------


@dataclass
class RolloutLog:
    """``OUT/rollouts.jsonl``: one line per completion, appended and flushed step by step."""

    path: Path
    run_id: int | None
    sampler: str
    lines: int = field(default=0)

    def write(self, step: int, tasks: list[Task], rolls: list[Rollout], scored: list[Scored],
              advantages: list[float], params: SamplingParams, group_of: list[int]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            for r, s, adv, g in zip(rolls, scored, advantages, group_of):
                f.write(json.dumps({
                    "run_id": self.run_id, "step": step, "group": g, "messages": tasks[r.prompt].prompt.to_dicts(),
                    "completion": r.completion.text, "finish_reason": r.completion.finish_reason,
                    "tokens": len(r.ids), "sampler": self.sampler, "params": params.to_dict(),
                    "rewards": [{"name": rw.name, "value": rw.value, "status": rw.status, "detail": rw.detail,
                                 "seconds": rw.seconds, "check": p} for p, rw in s.rewards],
                    "reward": None if math.isnan(s.reward) else s.reward, "advantage": adv,
                }, ensure_ascii=False) + "\n")
                self.lines += 1
