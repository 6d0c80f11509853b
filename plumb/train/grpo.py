"""GRPO with a LoRA adapter against verifiable rewards, by hand.

    from plumb.train.grpo import train
    result = train(RunSpec("grpo", ModelSpec("hf", DIR), tasks, "out/",
                           config={"rewards": {"exact": 1.0}, "steps": 50}), ctx)

For each step: take ``prompts_per_step`` prompts, sample G answers to each from
the current policy (llama.cpp, transformers or servers, ``samplers.py``), score them
with every verifier (``ctx.reward``), and turn the weighted rewards into
advantages within each group, ``A = (r - mean) / (std + 1e-4)`` (TRL's
unbiased std and epsilon; ``scale_rewards = "batch"`` divides by the batch's
std, ``"none"`` not at all). A group whose G rewards are all equal carries no
signal: it is skipped (not even a forward pass) and counted. Then
``num_iterations`` updates on the clipped surrogate

    ratio = pi / pi_old,   loss_t = -min(ratio A, clip(ratio, 1 - eps, 1 + eps_high) A) + beta * k3
    k3 = exp(ref - logp) - (ref - logp) - 1          (the reference: the adapter disabled)

aggregated per token over the step (``dapo``, TRL's default), per sequence
(``grpo``) or by a constant (``dr_grpo``). pi_old is the trainer's own
log-probs before the step's first update, so the ratio is exact whatever
sampled the tokens; the sampler/trainer gap is measured and reported apart.
Checkpoints, resume, the NaN and OOM stops and the lr schedule are every
loop's (``runtime.py``, ``checkpoint.py``); held-out evaluation, the best
checkpoint and the report are in ``grpo_eval.py``. Under torchrun each rank
samples, scores and trains on its share of a step's groups and every rank
sees the whole step's rewards (``distributed.py``).

Defaults for a 2-core CPU, and why
----------------------------------
* **G = 4, 2 prompts a step (8 completions), at most 64 new tokens.** Sampling
  is most of a CPU step's time; 4 is the smallest group whose mean is a usable
  baseline, and more prompts per step beat more samples per prompt for the
  same compute. TRL's 8 x 512 is a GPU budget.
* **lr 5e-4** for LoRA, linear decay (TRL's 1e-6 is for full fine-tuning; a LoRA
  adapter starts at zero). Measured on the starter: at 5e-5 a simple length
  reward moved 0.519 -> 0.531 in 24 steps, nothing a person could see; at 5e-4
  the GRPO bench's reward went 0.20 -> 0.81 held out in 30 steps
  (bench/RESULTS.md), with the KL leash below keeping the text fluent.
* **beta 0.04** (the DeepSeekMath value; TRL now defaults to 0): on a 135M model
  a leash against drifting into degenerate text is cheap insurance, and the
  KL is what the held-out signal is plotted against.
* **epsilon 0.2**, ``epsilon_high`` = epsilon (DAPO's 0.28 is one option away),
  **loss_type dapo** and **scale_rewards group**: TRL's defaults.
* **num_iterations 1**: every update on fresh samples; the ratio is then 1 and
  clipping only matters from a second iteration on (2 reuses a costly batch).
* **LoRA dropout 0**: the ratio and KL need two forwards to agree (TRL's
  ``disable_dropout`` for RL).
* **Rollouts by llama.cpp on a CPU**, transformers on a GPU; ``rollouts =
  "openai:URL,URL"`` takes them from a pool of servers that load each update.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import torch

from plumb.core.errors import PlumbError
from plumb.core.records import Event, RunResult, RunSpec, SamplingParams
from plumb.train import checkpoint, data, grpo_eval
from plumb.train.runtime import (end_step, get_lr, nonfinite, oom_stop, optimizer_for, out_of_time, peak_memory_mb,
                                 policy as policy_of, resume, start, write_adapter)
from plumb.train.options import GRPOConfig
from plumb.train.rollouts import RolloutLog, batch_of, gather, reward_metrics, row_logps, score, task_of, token_logps
from plumb.train.samplers import HFSampler, LlamaSampler, ServerSampler, base_gguf

EPS = 1e-4  # TRL's epsilon in the advantage's denominator


# -- the math: advantages, token weights, the clipped surrogate --------------------------------------


def advantages(rewards: torch.Tensor, scale: str = "group") -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, per-group std) for rewards shaped [groups, G]; NaN rewards (no weighted verifier
    applied) are left out of the mean and std and get advantage 0."""
    mean = rewards.nanmean(1, keepdim=True)
    n = (~rewards.isnan()).sum(1, keepdim=True)
    var = ((rewards - mean) ** 2).nanmean(1, keepdim=True) * n / (n - 1).clamp(min=1)
    std = torch.where(n > 1, var.sqrt(), torch.zeros_like(var))
    adv = rewards - mean
    if scale == "group":
        adv = adv / (std + EPS)
    elif scale == "batch":
        flat = rewards[~rewards.isnan()]
        adv = adv / ((flat.std() if flat.numel() > 1 else torch.tensor(0.0)) + EPS)
    return adv.nan_to_num(0.0), std.squeeze(1).nan_to_num(0.0)


def token_weights(lengths: list[int], loss_type: str, max_len: int) -> list[float]:
    """Per row, the weight of each of its tokens in the step's loss: ``dapo`` 1 / tokens in the step,
    ``grpo`` 1 / (row length x rows), ``dr_grpo`` 1 / (rows x max_completion_length)."""
    rows, tokens = len(lengths), sum(lengths)
    if not rows:  # nothing kept this step
        return []
    if loss_type == "dapo":
        return [1.0 / tokens] * rows
    if loss_type == "grpo":
        return [1.0 / (n * rows) for n in lengths]
    return [1.0 / (rows * max_len)] * rows


def grpo_loss(logps, old, ref, adv, weight, beta: float, eps_low: float, eps_high: float):
    """The clipped surrogate plus beta x k3 KL on flat per-token tensors (``adv`` and ``weight`` are
    the row's advantage and token weight, repeated per token). Returns (loss, per-token k3 or None,
    low-clipped mask, high-clipped mask)."""
    ratio = torch.exp(logps - old)
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high)
    per_token = -torch.min(ratio * adv, clipped * adv)
    kl = None
    if ref is not None:
        delta = ref - logps
        kl = torch.exp(delta) - delta - 1
        if beta:
            per_token = per_token + beta * kl
    low = (ratio < 1 - eps_low) & (adv < 0)
    high = (ratio > 1 + eps_high) & (adv > 0)
    return (per_token * weight).sum(), kl, low, high


# -- which prompts a step takes ---------------------------------------------------------------------


def mismatch_rate(rolls) -> dict[str, float]:
    """The share of completions whose re-tokenization has another length than the sampler's tokens, over those
    whose sampled length is known (all but a server's answers that came without log-probs); the ones trained on
    the sampler's own ids count as matching."""
    known = [r.mismatch for r in rolls if r.mismatch is not None]
    return {"sampling/retokenized_mismatch": sum(known) / len(known)} if known else {}


def step_prompts(n_tasks: int, per_step: int, step: int, seed: int, shuffle: bool = True) -> list[int]:
    """The prompts of ``step``: epochs of the tasks, each in its own seeded order, cut in runs of ``per_step``."""
    out = []
    for pos in range(step * per_step, (step + 1) * per_step):
        epoch, k = divmod(pos, n_tasks)
        order = list(range(n_tasks))
        if shuffle:
            random.Random(seed * 1_000_003 + epoch).shuffle(order)
        out.append(order[k])
    return out


def _fingerprint(rows: list[dict[str, Any]], cfg: GRPOConfig) -> str:
    keep = {k: v for k, v in cfg.to_dict().items() if k not in ("resume", "steps", "eval_every", "checkpoint_every",
                                                                 "keep_checkpoints", "gguf", "device")}
    return hashlib.sha256(json.dumps([rows, keep], sort_keys=True, default=str).encode()).hexdigest()[:16]


# -- the run ----------------------------------------------------------------------------------------


def train(run: RunSpec, ctx, *, policy: tuple[Any, Any] | None = None) -> RunResult:
    """Train ``run.policy`` with GRPO on the tasks in ``run.data``; write the adapter to
    ``run.out_dir/adapter`` (and the best one by the held-out signal to ``best-adapter``)."""
    cfg = GRPOConfig.from_dict(run.config)
    weights = dict(cfg.rewards)
    if not weights:
        raise PlumbError("grpo needs at least one reward: --reward NAME[=WEIGHT] (repeatable), or "
                         "rewards = {NAME = WEIGHT} in the run config. `plumb plugins` lists the verifiers.",
                         exit_code=2)
    for name in weights:  # before the first rollout (the stage checked already; a direct call too)
        if ctx.pm is not None:
            ctx.pm.registry.check_verifier(name)
    if cfg.judge and not cfg.constitution:
        raise PlumbError(f"judge = {cfg.judge!r} needs the constitution it judges against (the train stage sets "
                         "it from the workspace's).", exit_code=2)

    job = start(run, ctx, cfg)
    out, log, device, autocast, world = job.out, job.log, job.device, job.autocast, job.world

    # tasks: the training prompts and the held-out ones
    rows, held_rows = list(run.data), list(run.eval_data)
    if not rows:
        raise PlumbError("grpo has no tasks: pass --tasks FILE.jsonl or import prompts (`plumb data import`).",
                         exit_code=2)
    if not held_rows and cfg.holdout and len(rows) >= 10:
        cut = max(1, round(cfg.holdout * len(rows)))
        order = list(range(len(rows)))
        random.Random(cfg.seed).shuffle(order)
        held_rows = [rows[i] for i in sorted(order[:cut])]
        rows = [rows[i] for i in sorted(order[cut:])]
    tasks = [task_of(r) for r in rows]
    held = [task_of(r) for r in held_rows][:cfg.eval_prompts]
    total = cfg.steps or max(1, math.ceil(cfg.epochs * len(tasks) / cfg.prompts_per_step))
    G = cfg.num_generations
    log(f"{len(tasks)} training prompts, {len(held)} held out; {total} steps of {cfg.prompts_per_step} prompts "
        f"x {G} completions; rewards {weights}" + (f"; {world.size} ranks, each sampling and training its "
                                                    "share of a step's prompts" if world.size > 1 else ""))

    # the policy (LoRA on the base); the reference is the same model with its adapter off
    model, tokenizer = policy_of(job, policy)
    pad_id = tokenizer.pad_token_id
    data.prompt_text(tokenizer, tasks[0].prompt.to_dicts())  # no chat template: say so before sampling
    params, optimizer = optimizer_for(model, cfg)

    # resume: weights, optimizer, RNG, step, and what the evaluation kept
    fingerprint = _fingerprint(rows, cfg)
    world.same(fingerprint, "training tasks and settings")
    state = resume(job, model, optimizer, fingerprint, "other tasks or settings; resume with the same --tasks, "
                   "rewards and options") or {"step": 0}
    step, zero_streak = int(state["step"]), int(state.get("zero_streak", 0))
    watch = grpo_eval.Watch.from_dict(state.get("watch", {}))

    # the sampler: llama.cpp on a CPU (the LoRA exported and swapped in after each update), else transformers;
    # or a pool of servers that load the LoRA after each update
    kind = cfg.rollouts or ("hf" if device.startswith("cuda") else "llamacpp")
    if kind.startswith("openai:"):
        sampler = ServerSampler(ctx, model, tokenizer, kind.removeprefix("openai:"), out, step > 0, world.rank)
        kind = "openai"
    elif kind == "llamacpp":
        base = base_gguf(run.policy.target, out, cfg.base_gguf) if world.main else ""
        world.barrier()  # rank 0 made the base GGUF once; the others take it now that it is whole
        base = base or base_gguf(run.policy.target, out, cfg.base_gguf)
        sampler = LlamaSampler(ctx, model, tokenizer, base, run.policy.target, out, step > 0, world.rank)
    else:
        sampler = HFSampler(model, tokenizer, f"{run.policy}@grpo")
    rollout_log = RolloutLog(out / "rollouts.jsonl", run.run_id, kind)

    def save_checkpoint(step: int) -> Path:
        return checkpoint.save(out, step, model, optimizer, {"data": fingerprint, "config": cfg.to_dict(),
                                                              "zero_streak": zero_streak, "watch": watch.to_dict()},
                               keep=cfg.keep_checkpoints)

    def evaluate(step: int) -> dict[str, float]:
        sampler.refresh(step)
        values, texts = grpo_eval.evaluate(ctx, sampler, model, tokenizer, held, cfg, weights, step, autocast,
                                           watch.base)
        if watch.base is None and step == 0:  # the base policy's answers: what the judge compares against
            watch.base = texts
        return values

    model.train()
    started = time.perf_counter()
    metrics: dict[str, float] = {}
    held = held if world.main else []  # the held-out watch is rank 0's; the others wait at the next collective
    if held and step == 0:  # the baseline: where the held-out curves start (KL 0), and the first best
        metrics = evaluate(0)
        for line in watch.update(0, metrics, model, out):
            log(line)
        job.emit(Event("metric", run.run_id, 0, total, values=metrics))
    while step < total:
        t0 = time.perf_counter()
        lr = get_lr(step, total, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr

        # 1. rollouts: G completions per prompt from the current policy (under torchrun, each rank its groups)
        idx = step_prompts(len(tasks), cfg.prompts_per_step, step, cfg.seed, cfg.shuffle)
        step_tasks = [tasks[i] for i in idx]
        mine = world.shard(list(range(len(idx))))
        measure = kind != "hf" and cfg.gap_every > 0 and step % cfg.gap_every == 0 and world.main
        sp = SamplingParams(n=G, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_completion_length,
                            seed=(cfg.seed * 1_000_003 + step * 1009) & 0x7FFFFFFF)
        sampler.refresh(step)
        rolls = sampler.sample([step_tasks[k].prompt for k in mine], sp, mine) if mine else []
        t_sample = time.perf_counter()

        # 2. rewards, then every rank's rollouts on every rank (group order); advantages; OUT/rollouts.jsonl
        scored = score(ctx, [step_tasks[mine[r.prompt]] for r in rolls], [r.completion for r in rolls], weights,
                       cfg.checks)
        rolls, scored = gather(world, mine, rolls, scored)
        t_score = time.perf_counter()
        if step == 0:  # a weighted verifier that applies to nothing is a setup mistake: say so at once
            applied = {r.name for s in scored for _, r in s.rewards}
            for name in (n for n in weights if n not in applied):
                log(f"warning: the reward {name!r} applied to none of the first step's answers; check that the "
                    "tasks carry what it needs (answer, tests, schema, meta).")
        rewards = torch.tensor([s.reward for s in scored], dtype=torch.float32).view(len(idx), G)
        adv, std = advantages(rewards, cfg.scale_rewards)
        flat_adv = adv.flatten().tolist()
        if world.main:
            rollout_log.write(step + 1, step_tasks, rolls, scored, flat_adv, sp, [r.prompt for r in rolls])
        zero = [bool(torch.isclose(s, torch.tensor(0.0))) for s in std]
        keep = [k for k, r in enumerate(rolls) if not zero[r.prompt] and r.ids
                and not (cfg.mask_truncated_completions and r.truncated)]
        # token weights over the whole step (dapo: 1 / the step's kept tokens); a rank trains on its groups
        wts = token_weights([len(rolls[k].ids) for k in keep], cfg.loss_type, cfg.max_completion_length)
        owned = set(mine)
        own = [(k, w) for k, w in zip(keep, wts) if rolls[k].prompt in owned]

        # 3. the sampler/trainer gap, on the weights that sampled (llama.cpp or servers, every gap_every steps)
        extra: dict[str, float] = {}
        if measure:
            def train_logps(picked):
                with torch.no_grad(), autocast():
                    return row_logps(model, picked, pad_id, device, 1.0)  # both at T = 1: the models' gap
            extra.update(sampler.gap([t.prompt for t in step_tasks], rolls, train_logps))

        # 4. num_iterations updates on the groups with spread
        stats = {"loss": 0.0, "kl": 0.0, "kl_n": 0.0, "low": 0.0, "high": 0.0, "n": 0.0}
        grad_norm = torch.tensor(0.0)
        if keep:  # the same on every rank: each enters the update, with or without answers of its own
            with oom_stop(job, step, f"with {len(own)} completions of up to {cfg.max_completion_length} tokens. "
                          "Lower --batch-size (completions per forward), max_completion_length or prompts_per_step, "
                          "or set gradient_checkpointing = true.", optimizer):
                grad_norm = _update(job, model, optimizer, params, [rolls[k] for k, _ in own],
                                    [flat_adv[k] for k, _ in own], [w for _, w in own], pad_id, stats, step)
            sampler.dirty = True
        step += 1
        if world.any(out_of_time(cfg, started, time.perf_counter() - t0)):
            total = step  # the budget is spent: this step is the last, checkpointed and evaluated
        zero_streak = 0 if keep else zero_streak + 1

        # 5. log: TRL's names
        elapsed = time.perf_counter() - t0
        lengths = [len(r.ids) for r in rolls]
        finite = rewards[~rewards.isnan()]
        n_tok = max(stats["n"], 1.0)
        metrics = {
            "loss": stats["loss"], "reward": float(finite.mean()) if finite.numel() else math.nan,
            "reward_std": float(finite.std()) if finite.numel() > 1 else 0.0,
            "frac_reward_zero_std": sum(zero) / len(zero), "groups/zero_std": float(sum(zero)),
            "clip_ratio/low_mean": stats["low"] / n_tok,
            "clip_ratio/high_mean": stats["high"] / n_tok,
            "clip_ratio/region_mean": (stats["low"] + stats["high"]) / n_tok,
            "completions/mean_length": sum(lengths) / len(lengths),
            "completions/clipped_ratio": sum(r.truncated for r in rolls) / len(rolls),
            **mismatch_rate(rolls), **reward_metrics(scored), **extra,
            "grad_norm": float(grad_norm), "learning_rate": lr, "samples_per_s": len(rolls) / elapsed,
            "tokens_per_s": sum(lengths) / elapsed, "time/sampling": t_sample - t0, "time/scoring": t_score - t_sample,
            "time/training": time.perf_counter() - t_score, "peak_memory_mb": peak_memory_mb(device),
            "epoch": step * cfg.prompts_per_step / len(tasks),
        }
        if cfg.beta:
            metrics["kl"] = stats["kl"] / max(stats["kl_n"], 1.0)
        if held and ((cfg.eval_every and step % cfg.eval_every == 0) or step == total):
            metrics.update(evaluate(step))
            for line in watch.update(step, metrics, model, out):
                log(line)
        job.emit(Event("metric", run.run_id, step, total, values=metrics))
        job.emit(Event("progress", run.run_id, step, total, message=grpo_eval.summary(metrics)))
        if cfg.zero_spread_patience and zero_streak >= cfg.zero_spread_patience:
            if world.main:
                log(f"checkpoint {save_checkpoint(step)}")
            world.barrier()  # every rank stops here (the streak is global), none before the checkpoint is whole
            raise PlumbError(grpo_eval.no_signal(zero_streak, metrics, cfg))
        if zero_streak == max(2, cfg.zero_spread_patience // 2):
            log("warning: " + grpo_eval.no_signal(zero_streak, metrics, cfg))
        end_step(job, ctx, step, total, cfg.checkpoint_every, save_checkpoint)

    # the adapter; the report of the held-out evaluations
    adapter = write_adapter(job, model, tokenizer)
    artifacts = [("adapter", str(adapter)), ("rollouts", str(rollout_log.path))]
    artifacts += watch.finish(out, tokenizer) if world.main else []
    return RunResult(str(adapter), {**metrics, **watch.final_metrics()}, artifacts)


def _update(job, model, optimizer, params, rolls, advs, wts, pad_id, stats, step):
    """``num_iterations`` optimizer updates on this rank's kept rollouts (``wts``: their token weights in the
    whole step's loss), the gradients summed over the ranks; the step's stats, summed over them, into ``stats``."""
    cfg, device, autocast, world = job.cfg, job.device, job.autocast, job.world
    chunks = [list(range(i, min(i + cfg.batch_size, len(rolls)))) for i in range(0, len(rolls), cfg.batch_size)]
    batches = [batch_of(model, [rolls[k] for k in c], pad_id, device) for c in chunks]
    per_tok = [(torch.tensor([advs[k] for k in c], device=device)[b["owner"]],
                torch.tensor([wts[k] for k in c], device=device)[b["owner"]]) for c, b in zip(chunks, batches)]
    refs: list[torch.Tensor | None] = [None] * len(batches)
    if cfg.beta:  # the reference: the same weights with the adapter off, once per step
        with torch.no_grad(), model.disable_adapter(), autocast():
            refs = [token_logps(model, b, cfg.temperature).float() for b in batches]
    olds: list[torch.Tensor] = []
    grad_norm = torch.tensor(0.0)
    for it in range(cfg.num_iterations):
        losses = []
        for k, b in enumerate(batches):
            with autocast():
                lps = token_logps(model, b, cfg.temperature).float()
            if it == 0:  # pi_old: the trainer's own log-probs before this step's first update
                olds.append(lps.detach())
            adv, w = per_tok[k]
            loss, kl, low, high = grpo_loss(lps, olds[k], refs[k], adv, w, cfg.beta, cfg.epsilon, cfg.epsilon_upper)
            loss.backward()
            losses.append(loss.detach())
            stats["loss"] += float(losses[-1]) / cfg.num_iterations
            stats["low"] += float(low.sum())
            stats["high"] += float(high.sum())
            stats["n"] += lps.numel()
            if kl is not None and it == 0:  # the KL of the policy that sampled (before this step's updates)
                stats["kl"] += float(kl.detach().sum())
                stats["kl_n"] += lps.numel()
        world.sum_gradients(params)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        finite = bool(torch.isfinite(grad_norm)) and (not losses or bool(torch.isfinite(torch.stack(losses)).all()))
        if world.any(not finite):
            raise nonfinite(job, step, f" (iteration {it + 1})", "lower --lr or raise beta")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    keys = list(stats)  # every rank's share of the loss and its counts, summed
    for key, value in zip(keys, world.sum_(torch.tensor([stats[k] for k in keys], dtype=torch.float64)).tolist()):
        stats[key] = value
    return grad_norm
