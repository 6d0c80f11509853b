"""One training function for DPO, IPO, hinge, KTO, ORPO and SFT with LoRA.

    from plumb.train.loop import train
    result = train(RunSpec("dpo", ModelSpec("hf", "DIR"), rows, "out/", config={"steps": 100}), ctx)

Read it top to bottom, nanoGPT style: config and seed, load the policy and wrap
it in a LoRA adapter, tokenize, precompute the reference log-probs, then one
loop in a fixed order — set lr, micro-steps (loss / grad_accum), clip, step,
zero_grad, log, checkpoint — then save the adapter. Defaults and the reasons
for them are in ``plumb/train/__init__.py``. Under torchrun each rank computes
its rows of every micro-batch and the gradients are summed before the clip
(``distributed.py``).

The reference model is the policy with its adapter disabled (``with
model.disable_adapter():`` under no_grad): one copy of the weights. Sequence
log-probs are computed like TRL's (shifted labels, completion mask, summed over
answer tokens) with two savings that leave the numbers unchanged (tests check
both against the plain computation):

* chosen and rejected of a pair share one row, ``prompt + chosen + rejected``,
  with a 4D mask that hides the chosen answer from the rejected one
  (``data.collate_shared``): the prompt is computed once, not twice, and far
  less padding is computed (``shared_prompt = false`` gives TRL's stacked
  ``[chosen; rejected]`` batch instead);
* only the positions that predict an answer token reach the LM head, in
  chunks, and the ``[tokens, vocab]`` logits are recomputed in backward rather
  than kept (``HeadLogps`` in ``logps.py``).
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import Any

import torch

from plumb.core.errors import PlumbError
from plumb.core.records import Event, RunResult, RunSpec
from plumb.train import TrainConfig, checkpoint, data, losses
from plumb.train.logps import completion_logps, completion_logps_kl
from plumb.train.runtime import (end_step, get_lr, nonfinite, oom_stop, optimizer_for, out_of_time, peak_memory_mb,
                                 policy as policy_of, resume, start, write_adapter)
from plumb.train.runtime import load_policy  # noqa: F401  (bench/ loads its policy as loop.load_policy)


def _to(batch: dict[str, Any], device: str) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def pair_batch(model, examples: list[data.Example], pad_id: int, shared: bool = True) -> dict[str, Any]:
    """One batch for chosen + rejected: the shared-prompt layout where the model's
    attention takes a custom 4D mask (sdpa), else TRL's stacked layout."""
    attn = getattr(model.get_base_model().config, "_attn_implementation", None)
    if shared and attn == "sdpa":
        return data.collate_shared(examples, pad_id)
    return data.collate_pairs(examples, pad_id)


def _seqs(examples: list[data.Example], method: str) -> list[tuple[list[int], list[int]]]:
    """The sequences the reference scores for each example, in a fixed layout."""
    if method == "kto":
        return [(e.prompt, e.answers[0]) for e in examples] + [(e.prompt, e.kl) for e in examples]
    return [(e.prompt, e.answers[0]) for e in examples] + [(e.prompt, e.answers[1]) for e in examples]


@torch.no_grad()
def reference_logps(model, examples, method, pad_id, device, autocast, batch_size, shared=True) -> torch.Tensor:
    """[n, 2] summed reference log-probs: (chosen, rejected) or (completion, KL completion)."""
    was_training = model.training
    model.eval()
    out = []
    with model.disable_adapter(), autocast():
        for i in range(0, len(examples), batch_size):
            chunk = examples[i:i + batch_size]
            batch = (data.collate(_seqs(chunk, method), pad_id) if method == "kto"
                     else pair_batch(model, chunk, pad_id, shared))
            seq = completion_logps(model, _to(batch, device))[0]
            out.append(torch.stack(seq.float().chunk(2), dim=1))
    model.train(was_training)
    return torch.cat(out)


# -- one micro-batch: loss + the metrics TRL logs ---------------------------------------------


def batch_loss(model, examples, ref, cfg: TrainConfig, pad_id, device, autocast, world):
    """(loss, {metric: detached tensor}, tokens) for this rank's rows of one micro-batch (all of it alone)."""
    m = cfg.method
    if m == "sft":
        batch = _to(data.collate([(e.prompt, e.answers[0]) for e in examples], pad_id), device)
        with autocast():
            if cfg.anchor:
                tok, owner, kl = completion_logps_kl(model, batch)
            else:
                (_, _, tok, owner), kl = completion_logps(model, batch), None
        loss = losses.sft_loss(tok.float(), owner, cfg.content_weight, kl, cfg.anchor)
        stats = {"loss": loss.detach()} if kl is None else {"loss": loss.detach(), "kl": kl.detach().mean()}
        return loss, stats, batch["attention_mask"].sum()

    batch = _to(data.collate([(e.prompt, e.answers[0]) for e in examples], pad_id) if m == "kto" else
                pair_batch(model, examples, pad_id, cfg.shared_prompt), device)
    with autocast():
        seq, counts, tok, owner = completion_logps(model, batch)
    seq = seq.float()
    tokens = sum(len(e.prompt) + len(a) for e in examples for a in e.answers)  # as if stacked, like TRL counts

    if m == "orpo":  # no reference: NLL on chosen + lambda * odds-ratio term, on mean log-probs
        pc, pr = seq.chunk(2)
        nc, nr = counts.chunk(2)
        nll = -tok[owner < len(examples)].float().mean()  # the chosen answers' tokens
        pair_losses, chosen_rewards, rejected_rewards, log_odds = losses.orpo_loss(pc / nc, pr / nr, cfg.beta)
        loss = nll + pair_losses.mean()
        stats = {"loss": loss.detach(), "nll_loss": nll.detach(), "log_odds_chosen": log_odds.mean(),
                 "log_odds_ratio": (-pair_losses.detach() / cfg.beta).mean(),
                 **_pair_stats(chosen_rewards, rejected_rewards, pc, pr)}
        return loss, stats, tokens

    if ref is None:  # reference forward in the step (precompute_ref = false)
        ref = reference_logps(model, examples, m, pad_id, device, autocast, len(examples),
                              cfg.shared_prompt).to(device)

    if m == "kto":
        kl_batch = _to(data.collate([(e.prompt, e.kl) for e in examples], pad_id), device)
        with torch.no_grad(), autocast():
            policy_kl = completion_logps(model, kl_batch)[0]
        kl = losses.kto_kl(*world.cat(policy_kl.float(), ref[:, 1]))  # over every rank's rows, as TRL gathers it
        good = torch.tensor([bool(e.label) for e in examples], device=device)
        per, good_rewards, bad_rewards = losses.kto_loss(seq, ref[:, 0], good, kl, cfg.beta, cfg.desirable_weight,
                                                         cfg.undesirable_weight)
        loss = per.mean()
        nan = torch.tensor(float("nan"), device=device)
        stats = {"loss": loss.detach(), "kl": kl,
                 "rewards/chosen": good_rewards.mean() if len(good_rewards) else nan,
                 "rewards/rejected": bad_rewards.mean() if len(bad_rewards) else nan,
                 "logps/chosen": seq[good].detach().mean() if len(good_rewards) else nan,
                 "logps/rejected": seq[~good].detach().mean() if len(bad_rewards) else nan}
        stats["rewards/margins"] = stats["rewards/chosen"] - stats["rewards/rejected"]
        return loss, stats, tokens + sum(len(e.prompt) + len(e.kl) for e in examples)

    pc, pr = seq.chunk(2)
    ref_chosen, ref_rejected = ref[:, 0], ref[:, 1]
    if cfg.loss == "ipo":  # IPO works on length-normalized log-ratios (TRL does the same)
        nc, nr = counts.chunk(2)
        per, _, _ = losses.dpo_loss(pc / nc, pr / nr, ref_chosen / nc, ref_rejected / nr, cfg.beta, "ipo")
    else:
        per, _, _ = losses.dpo_loss(pc, pr, ref_chosen, ref_rejected, cfg.beta, cfg.loss, cfg.label_smoothing)
    loss = per.mean()
    stats = {}
    if cfg.rpo_alpha:  # RPO (TRL's rpo_alpha): + alpha * NLL of the chosen answers, per token
        nll = -tok[owner < len(examples)].float().mean()
        loss = loss + cfg.rpo_alpha * nll
        stats["nll_loss"] = nll.detach()
    chosen_rewards = cfg.beta * (pc - ref_chosen).detach()
    rejected_rewards = cfg.beta * (pr - ref_rejected).detach()
    return loss, {"loss": loss.detach(), **stats, **_pair_stats(chosen_rewards, rejected_rewards, pc, pr)}, tokens


def _pair_stats(chosen_rewards, rejected_rewards, policy_chosen, policy_rejected) -> dict[str, torch.Tensor]:
    """TRL's pair metrics from the implicit rewards and the policy's summed log-probs."""
    return {"rewards/chosen": chosen_rewards.mean(), "rewards/rejected": rejected_rewards.mean(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
            "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
            "logps/chosen": policy_chosen.detach().mean(), "logps/rejected": policy_rejected.detach().mean()}


# -- held-out evaluation ---------------------------------------------------------------------


@torch.no_grad()
def evaluate(model, examples, ref, cfg: TrainConfig, pad_id, device, autocast) -> dict[str, float]:
    """Implicit-reward metrics on held-out pairs (or NLL on held-out answers for sft)."""
    was_training = model.training
    model.eval()
    if examples and len(examples[0].answers) == 1:
        nll, n = 0.0, 0
        for i in range(0, len(examples), cfg.batch_size):
            chunk = examples[i:i + cfg.batch_size]
            with autocast():
                tok = completion_logps(model, _to(data.collate([(e.prompt, e.answers[0]) for e in chunk],
                                                               pad_id), device))[2]
            nll, n = nll - float(tok.float().sum()), n + tok.numel()
        model.train(was_training)
        return {"eval/loss": nll / max(n, 1)}
    pol = _policy_pairs(model, examples, pad_id, device, autocast, cfg.batch_size, cfg.shared_prompt)
    model.train(was_training)
    chosen, rejected = cfg.beta * (pol[:, 0] - ref[:, 0]), cfg.beta * (pol[:, 1] - ref[:, 1])
    return {"eval/loss": float(losses.dpo_loss(pol[:, 0], pol[:, 1], ref[:, 0], ref[:, 1], cfg.beta)[0].mean()),
            "eval/rewards/accuracies": float((chosen > rejected).float().mean()),
            "eval/rewards/margins": float((chosen - rejected).mean()),
            "eval/rewards/chosen": float(chosen.mean()), "eval/rewards/rejected": float(rejected.mean())}


def _policy_pairs(model, examples, pad_id, device, autocast, batch_size, shared) -> torch.Tensor:
    out = []
    with autocast():
        for i in range(0, len(examples), batch_size):
            seq = completion_logps(model, _to(pair_batch(model, examples[i:i + batch_size], pad_id, shared),
                                              device))[0]
            out.append(torch.stack(seq.float().chunk(2), dim=1))
    return torch.cat(out)


# -- the run ------------------------------------------------------------------------------------


def _fingerprint(examples: list[data.Example]) -> str:
    h = hashlib.sha256()
    for e in examples:
        h.update(repr((e.prompt, e.answers, e.label)).encode())
    return h.hexdigest()[:16]


def _weight(examples: list[data.Example], idx: list[int], cfg: TrainConfig) -> float:
    """What a micro-batch's loss is a mean over: answer tokens for sft (each answer's last token weighing 1,
    the others ``content_weight``), rows (pairs) for the rest; a rank's share of the micro-batch's loss is
    its weight over the whole's. (ORPO's and RPO's NLL term is a mean over a rank's own chosen tokens.)"""
    if cfg.method == "sft":
        return sum(cfg.content_weight * (len(examples[i].answers[0]) - 1) + 1 for i in idx)
    return len(idx)


def train(run: RunSpec, ctx=None, *, policy: tuple[Any, Any] | None = None) -> RunResult:
    """Train ``run.policy`` with ``run.method`` on ``run.data``; write the adapter
    to ``run.out_dir/adapter``. ``ctx`` (a HookContext) receives the events and
    carries the cancel flag: a cancel stops at the next step boundary with a
    checkpoint, so ``resume`` continues from there. ``policy`` = (peft model,
    tokenizer) skips loading (tests and benchmarks pass one to inspect afterwards)."""
    cfg = TrainConfig.from_dict({**run.config, "method": run.method})
    job = start(run, ctx, cfg)
    out, log, device, autocast, world = job.out, job.log, job.device, job.autocast, job.world

    # the policy: base weights frozen, LoRA adapter trainable; the reference is the same model, adapter off
    model, tokenizer = policy_of(job, policy)
    pad_id = tokenizer.pad_token_id

    # data: tokenize once, fixed micro-batches, KTO's mismatched completions
    prepared = data.prepare(run.data, tokenizer, cfg.method, cfg.max_length)
    data.check_data(prepared, cfg.method)
    examples, counts = prepared.examples, prepared.counts
    shuffle = cfg.shuffle
    groups = data.groups(len(examples), cfg.batch_size, cfg.seed, shuffle)
    world.check_batches(groups, cfg.batch_size)
    if cfg.method == "kto":
        data.assign_kl(examples, groups)
        if cfg.batch_size < 2:
            raise PlumbError("kto needs --batch-size of at least 2: its KL estimate pairs each prompt with "
                             "another row's completion from the same batch.", exit_code=2)
    dropped = {k: v for k, v in counts.items() if k not in ("rows",) and v}
    log(f"{len(examples)} of {counts['rows']} rows to train on" + (f" ({dropped})" if dropped else ""))
    eval_examples = []
    if run.eval_data:
        eval_prepared = data.prepare(run.eval_data, tokenizer, "dpo" if data.is_pairs(run.eval_data) else "sft",
                                     cfg.max_length)
        data.check_data(eval_prepared, cfg.method, "eval data")
        eval_examples = eval_prepared.examples
    total = cfg.steps or max(1, math.ceil(cfg.epochs * len(groups) / cfg.grad_accum))

    # reference log-probs: once, before training (the reference never changes), batch by batch
    # exactly as training will batch them (each rank its part), so they equal an in-step reference forward
    ref_all = None
    if cfg.method != "sft" and cfg.method != "orpo" and cfg.precompute_ref:
        t0 = time.perf_counter()
        ref_all = torch.empty(len(examples), 2)
        for idx in map(world.shard, groups):
            ref_all[idx] = reference_logps(model, [examples[i] for i in idx], cfg.method, pad_id, device, autocast,
                                           len(idx), cfg.shared_prompt).cpu()
        log(f"reference log-probs for {len(examples)} rows in {time.perf_counter() - t0:.1f}s")
    eval_ref = (reference_logps(model, eval_examples, "dpo", pad_id, device, autocast, cfg.batch_size,
                                cfg.shared_prompt)
                if eval_examples and len(eval_examples[0].answers) == 2 else None)

    # optimizer; the lr schedule is get_lr(step)
    params, optimizer = optimizer_for(model, cfg)
    fingerprint = _fingerprint(examples)
    world.same(fingerprint, "training rows")
    state = resume(job, model, optimizer, fingerprint, "different data (or a different max_length/tokenizer); "
                   "resume with the same --data and settings")
    step = int(state["step"]) if state else 0

    def save_checkpoint(step: int) -> Path:
        return checkpoint.save(out, step, model, optimizer, {"data": fingerprint, "config": cfg.to_dict(),
                                                              "examples_seen": step * cfg.grad_accum * cfg.batch_size,
                                                              "counts": counts}, keep=cfg.keep_checkpoints)

    model.train()
    started = time.perf_counter()
    metrics: dict[str, float] = {}
    order_epoch, order = -1, []
    while step < total:
        t0 = time.perf_counter()
        lr = get_lr(step, total, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        sums: dict[str, torch.Tensor] = {}
        micro_losses, tokens = [], 0
        with oom_stop(job, step, f"with --batch-size {cfg.batch_size} and --max-length {cfg.max_length}. Lower "
                      "--batch-size (raise --grad-accum to keep the effective batch), lower --max-length, or turn "
                      "on gradient_checkpointing = true in the run config.", optimizer):
            for k in range(cfg.grad_accum):
                micro = step * cfg.grad_accum + k
                epoch, pos = divmod(micro, len(groups))
                if epoch != order_epoch:
                    order_epoch, order = epoch, data.epoch_order(len(groups), cfg.seed, epoch, shuffle)
                idx = world.shard(groups[order[pos]])  # this rank's rows of the micro-batch
                share = _weight(examples, idx, cfg) / _weight(examples, groups[order[pos]], cfg) / cfg.grad_accum
                ref = ref_all[idx].to(device) if ref_all is not None else None
                loss, stats, ntok = batch_loss(model, [examples[i] for i in idx], ref, cfg, pad_id, device, autocast,
                                               world)
                (loss * share).backward()
                micro_losses.append((loss.detach(), idx))
                tokens = tokens + ntok
                for key, value in stats.items():
                    sums[key] = sums.get(key, 0) + value.float() * share
            world.sum_gradients(params)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            finite = torch.isfinite(grad_norm) & torch.isfinite(torch.stack([m for m, _ in micro_losses])).all()
            if not bool(finite):  # the one sync per step; nothing has been applied yet
                bad = next((k for k, (m, _) in enumerate(micro_losses) if not torch.isfinite(m)), None)
                where = (f"micro-batch {bad} (rows {micro_losses[bad][1]})" if bad is not None
                         else "the gradient (loss finite)")
                raise nonfinite(job, step, f", {where}", "lower --lr or raise --beta")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        step += 1
        if world.any(out_of_time(cfg, started, time.perf_counter() - t0)):
            total = step  # the budget is spent: this step is the last, checkpointed and evaluated

        # log: one host sync (and one sum over the ranks) for every metric of the step
        keys = list(sums)
        values = world.sum_(torch.stack([sums[k] for k in keys] + [torch.as_tensor(tokens).float()
                                                                   .to(grad_norm.device)]))
        values = torch.cat([values, grad_norm.float()[None]]).tolist()
        metrics = dict(zip(keys, values[:-2]))
        elapsed = time.perf_counter() - t0
        metrics.update({"grad_norm": values[-1], "learning_rate": lr, "tokens_per_s": values[-2] / elapsed,
                        "peak_memory_mb": peak_memory_mb(device), "epoch": step * cfg.grad_accum / len(groups)})
        evaluating = eval_examples and world.main  # rank 0 alone; the others wait at the next sum
        if evaluating and cfg.eval_every and step % cfg.eval_every == 0 and step < total:
            metrics.update(evaluate(model, eval_examples, eval_ref, cfg, pad_id, device, autocast))
        if evaluating and step == total:
            metrics.update(evaluate(model, eval_examples, eval_ref, cfg, pad_id, device, autocast))
        job.emit(Event("metric", run.run_id, step, total, values=metrics))
        end_step(job, ctx, step, total, cfg.checkpoint_every, save_checkpoint)

    adapter = write_adapter(job, model, tokenizer)
    if not metrics and eval_examples and world.main:  # resumed a finished run
        metrics = evaluate(model, eval_examples, eval_ref, cfg, pad_id, device, autocast)
    return RunResult(str(adapter), {**metrics, **{f"data/{k}": float(v) for k, v in counts.items()}},
                     [("adapter", str(adapter))])
