"""One training function for DPO, IPO, hinge, KTO, ORPO and SFT with LoRA.

    from plumb.train.loop import train
    result = train(RunSpec("dpo", ModelSpec("hf", "DIR"), rows, "out/", config={"steps": 100}), ctx)

Read it top to bottom, nanoGPT style: config and seed, load the policy and wrap
it in a LoRA adapter, tokenize, precompute the reference log-probs, then one
loop in a fixed order — set lr, micro-steps (loss / grad_accum), clip, step,
zero_grad, log, checkpoint — then save the adapter. Defaults and the reasons
for them are in ``plumb/train/__init__.py``.

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
import random
import resource
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from plumb.core.errors import PlumbError
from plumb.core.context import Cancelled
from plumb.core.records import Event, RunResult, RunSpec
from plumb.train import TrainConfig, checkpoint, data, losses
from plumb.train.logps import completion_logps


# -- the policy: HF causal LM + LoRA -----------------------------------------------------


def load_policy(target: str, cfg: TrainConfig, device: str, task: str = "CAUSAL_LM"):
    """(peft model, tokenizer) for an HF model directory or hub id. ``task = "SEQ_CLS"`` loads it with a
    scalar head instead of the LM head (a reward model; peft trains the head along with the LoRA)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()  # plumb draws its own progress

    try:
        tokenizer = AutoTokenizer.from_pretrained(target)
    except Exception as exc:  # OSError, ValueError, TypeError... depending on what is missing
        raise PlumbError(f"cannot load a tokenizer from {target}: {str(exc).splitlines()[0][:200]}. The model "
                         "directory needs its tokenizer files (tokenizer.json, tokenizer_config.json) next to "
                         "config.json; save them with tokenizer.save_pretrained(DIR).", exit_code=2) from None
    try:
        if task == "SEQ_CLS":
            model = AutoModelForSequenceClassification.from_pretrained(target, dtype=torch.float32, num_labels=1)
        else:
            model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32)
    except (ValueError, KeyError) as exc:
        raise PlumbError(f"{target}: unsupported model architecture ({str(exc).splitlines()[0][:200]}). plumb "
                         "trains causal language models that transformers' AutoModelForCausalLM loads "
                         "(Llama, Qwen, Mistral, SmolLM, ...).", exit_code=2) from None
    except OSError as exc:
        raise PlumbError(f"cannot load model weights from {target}: {str(exc).splitlines()[0][:200]}.",
                         exit_code=2) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    targets = [t for t in cfg.lora_targets if t in names]
    if not targets:
        raise PlumbError(f"{target}: unsupported architecture for LoRA: none of the target layers "
                         f"{list(cfg.lora_targets)} exist; its linear layers are {sorted(names)}. Set lora_targets "
                         "in the run config (--config run.toml).", exit_code=2)
    torch.manual_seed(cfg.seed)  # lora_A's init
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, task_type=task)
    with warnings.catch_warnings():  # peft 0.21 reads transformers 5's deprecated is_gradient_checkpointing
        warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated", category=FutureWarning)
        model = get_peft_model(model, lora).to(device)
    if cfg.init_adapter:
        _load_lora_weights(model, cfg.init_adapter)
    if cfg.gradient_checkpointing:
        base = model.get_base_model()
        if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5
            base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model, tokenizer


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


def batch_loss(model, examples, ref, cfg: TrainConfig, pad_id, device, autocast):
    """(loss, {metric: detached tensor}, tokens) for one micro-batch."""
    m = cfg.method
    if m == "sft":
        batch = _to(data.collate([(e.prompt, e.answers[0]) for e in examples], pad_id), device)
        with autocast():
            _, _, tok, owner = completion_logps(model, batch)
        loss = losses.sft_loss(tok.float(), owner, cfg.content_weight)
        return loss, {"loss": loss.detach()}, batch["attention_mask"].sum()

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
        pair_losses, cr, rr, log_odds = losses.orpo_loss(pc / nc, pr / nr, cfg.beta)
        loss = nll + pair_losses.mean()
        stats = {"loss": loss.detach(), "nll_loss": nll.detach(), "log_odds_chosen": log_odds.mean(),
                 "log_odds_ratio": (-pair_losses.detach() / cfg.beta).mean(), **_pair_stats(cr, rr, pc, pr)}
        return loss, stats, tokens

    if ref is None:  # reference forward in the step (precompute_ref = false)
        ref = reference_logps(model, examples, m, pad_id, device, autocast, len(examples),
                              cfg.shared_prompt).to(device)

    if m == "kto":
        kl_batch = _to(data.collate([(e.prompt, e.kl) for e in examples], pad_id), device)
        with torch.no_grad(), autocast():
            policy_kl = completion_logps(model, kl_batch)[0]
        kl = losses.kto_kl(policy_kl.float(), ref[:, 1])
        good = torch.tensor([bool(e.label) for e in examples], device=device)
        per, cr, rr = losses.kto_loss(seq, ref[:, 0], good, kl, cfg.beta, cfg.desirable_weight,
                                      cfg.undesirable_weight)
        loss = per.mean()
        nan = torch.tensor(float("nan"), device=device)
        stats = {"loss": loss.detach(), "kl": kl,
                 "rewards/chosen": cr.mean() if len(cr) else nan, "rewards/rejected": rr.mean() if len(rr) else nan,
                 "logps/chosen": seq[good].detach().mean() if len(cr) else nan,
                 "logps/rejected": seq[~good].detach().mean() if len(rr) else nan}
        stats["rewards/margins"] = stats["rewards/chosen"] - stats["rewards/rejected"]
        return loss, stats, tokens + sum(len(e.prompt) + len(e.kl) for e in examples)

    pc, pr = seq.chunk(2)
    rc, rr_ = ref[:, 0], ref[:, 1]
    if cfg.loss == "ipo":  # IPO works on length-normalized log-ratios (TRL does the same)
        nc, nr = counts.chunk(2)
        per, _, _ = losses.dpo_loss(pc / nc, pr / nr, rc / nc, rr_ / nr, cfg.beta, "ipo")
    else:
        per, _, _ = losses.dpo_loss(pc, pr, rc, rr_, cfg.beta, cfg.loss, cfg.label_smoothing)
    loss = per.mean()
    stats = {}
    if cfg.rpo_alpha:  # RPO (TRL's rpo_alpha): + alpha * NLL of the chosen answers, per token
        nll = -tok[owner < len(examples)].float().mean()
        loss = loss + cfg.rpo_alpha * nll
        stats["nll_loss"] = nll.detach()
    cr, rj = cfg.beta * (pc - rc).detach(), cfg.beta * (pr - rr_).detach()
    return loss, {"loss": loss.detach(), **stats, **_pair_stats(cr, rj, pc, pr)}, tokens


def _pair_stats(cr, rr, pc, pr) -> dict[str, torch.Tensor]:
    return {"rewards/chosen": cr.mean(), "rewards/rejected": rr.mean(),
            "rewards/accuracies": (cr > rr).float().mean(), "rewards/margins": (cr - rr).mean(),
            "logps/chosen": pc.detach().mean(), "logps/rejected": pr.detach().mean()}


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
    cr, rr = cfg.beta * (pol[:, 0] - ref[:, 0]), cfg.beta * (pol[:, 1] - ref[:, 1])
    return {"eval/loss": float(losses.dpo_loss(pol[:, 0], pol[:, 1], ref[:, 0], ref[:, 1], cfg.beta)[0].mean()),
            "eval/rewards/accuracies": float((cr > rr).float().mean()),
            "eval/rewards/margins": float((cr - rr).mean()),
            "eval/rewards/chosen": float(cr.mean()), "eval/rewards/rejected": float(rr.mean())}


def _policy_pairs(model, examples, pad_id, device, autocast, batch_size, shared) -> torch.Tensor:
    out = []
    with autocast():
        for i in range(0, len(examples), batch_size):
            seq = completion_logps(model, _to(pair_batch(model, examples[i:i + batch_size], pad_id, shared),
                                              device))[0]
            out.append(torch.stack(seq.float().chunk(2), dim=1))
    return torch.cat(out)


# -- the run ------------------------------------------------------------------------------------


def get_lr(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine or linear decay to 0 (as transformers' schedules)."""
    lr, warmup = cfg.learning_rate, math.ceil(cfg.warmup_ratio * total)
    if step < warmup:
        return lr * step / max(1, warmup)
    if cfg.schedule == "constant":
        return lr
    progress = (step - warmup) / max(1, total - warmup)
    if cfg.schedule == "linear":
        return lr * max(0.0, 1.0 - progress)
    return lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _fingerprint(examples: list[data.Example]) -> str:
    h = hashlib.sha256()
    for e in examples:
        h.update(repr((e.prompt, e.answers, e.label)).encode())
    return h.hexdigest()[:16]


def _load_lora_weights(model, adapter_dir: str) -> None:
    """Copy a saved peft adapter's LoRA weights into ``model`` (on-policy rounds continue the last round's
    adapter; the reference stays the adapter-off base)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(adapter_dir) / "adapter_model.safetensors"
    if not path.is_file():
        raise PlumbError(f"init_adapter: no adapter_model.safetensors in {adapter_dir}.", exit_code=2)
    result = set_peft_model_state_dict(model, load_file(str(path)))
    if getattr(result, "unexpected_keys", None):
        raise PlumbError(f"init_adapter {adapter_dir} does not fit this model's LoRA (r, targets): unexpected "
                         f"{list(result.unexpected_keys)[:3]}.", exit_code=2)


def out_of_time(cfg, started: float, step_seconds: float) -> bool:
    """True when ``cfg.time_limit_s`` is set and another step like the last would pass it."""
    limit = getattr(cfg, "time_limit_s", None)
    return bool(limit) and time.perf_counter() - started + step_seconds > limit


def _oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


def runtime(cfg) -> tuple[str, Any]:
    """Seed Python's and torch's RNGs from ``cfg.seed``; the device (``cfg.device``, else CUDA when there is
    one) and an autocast factory (bf16 on a CUDA device that has it, else a no-op). Every loop starts here."""
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    use_bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported()

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else nullcontext()

    return device, autocast


def end_step(ctx, step: int, total: int, every: int, save, log) -> None:
    """After a step: a checkpoint (``save(step)``) every ``every`` steps, at the last one and when a cancel
    was asked; a cancel then stops the run with ``Cancelled``, and resume continues from that checkpoint."""
    stop = ctx is not None and ctx.cancelled()
    if step % every == 0 or step == total or stop:
        path = save(step)
        log(f"checkpoint {path}")
    if stop and step < total:
        raise Cancelled(f"stopped at step {step} of {total}; the checkpoint is in {path.parent} "
                        "and resume continues from it.")


def write_adapter(model, tokenizer, out: Path, files: dict[str, str] | None = None) -> Path:
    """The adapter (peft format, loads with ``PeftModel.from_pretrained``) and the tokenizer into
    ``out/adapter``, written beside it and then renamed, so a crash never leaves half an adapter; ``files``
    (name -> text) are written into it too."""
    import shutil

    adapter, tmp = out / "adapter", out / ".adapter.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    for name, text in (files or {}).items():
        (tmp / name).write_text(text)
    if adapter.exists():
        shutil.rmtree(adapter)
    tmp.rename(adapter)
    return adapter


def train(run: RunSpec, ctx=None, *, policy: tuple[Any, Any] | None = None) -> RunResult:
    """Train ``run.policy`` with ``run.method`` on ``run.data``; write the adapter
    to ``run.out_dir/adapter``. ``ctx`` (a HookContext) receives the events and
    carries the cancel flag: a cancel stops at the next step boundary with a
    checkpoint, so ``resume`` continues from there. ``policy`` = (peft model,
    tokenizer) skips loading (tests and benchmarks pass one to inspect afterwards)."""
    cfg = TrainConfig.from_dict({**run.config, "method": run.method})
    resume = cfg.resume
    out = Path(run.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    emit = ctx.emit if ctx is not None else (lambda event: None)

    def log(message: str) -> None:
        emit(Event("log", run.run_id, message=message))

    device, autocast = runtime(cfg)

    # the policy: base weights frozen, LoRA adapter trainable; the reference is the same model, adapter off
    if policy is None:
        if run.policy.backend != "hf":
            raise PlumbError(f"training needs an HF model (hf:DIR or starter), not {run.policy}.", exit_code=2)
        model, tokenizer = load_policy(run.policy.target, cfg, device)
    else:
        model, tokenizer = policy
    pad_id = tokenizer.pad_token_id

    # data: tokenize once, fixed micro-batches, KTO's mismatched completions
    prepared = data.prepare(run.data, tokenizer, cfg.method, cfg.max_length)
    data.check_data(prepared, cfg.method)
    examples, counts = prepared.examples, prepared.counts
    shuffle = cfg.shuffle
    groups = data.groups(len(examples), cfg.batch_size, cfg.seed, shuffle)
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
    # exactly as training will batch them, so they equal what an in-step reference forward gives
    ref_all = None
    if cfg.method != "sft" and cfg.method != "orpo" and cfg.precompute_ref:
        t0 = time.perf_counter()
        ref_all = torch.empty(len(examples), 2)
        for idx in groups:
            ref_all[idx] = reference_logps(model, [examples[i] for i in idx], cfg.method, pad_id, device, autocast,
                                           len(idx), cfg.shared_prompt).cpu()
        log(f"reference log-probs for {len(examples)} rows in {time.perf_counter() - t0:.1f}s")
    eval_ref = (reference_logps(model, eval_examples, "dpo", pad_id, device, autocast, cfg.batch_size,
                                cfg.shared_prompt)
                if eval_examples and len(eval_examples[0].answers) == 2 else None)

    # optimizer; the lr schedule is get_lr(step)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(0.9, 0.999), eps=1e-8,
                                  weight_decay=cfg.weight_decay)
    fingerprint = _fingerprint(examples)
    step, last_ckpt = 0, checkpoint.latest(out) if resume else None
    if resume and last_ckpt is None:
        raise PlumbError(f"--resume: no checkpoint in {out / 'checkpoints'}; start without --resume.", exit_code=2)
    if last_ckpt is not None:
        state = checkpoint.load(last_ckpt, model, optimizer)
        if state.get("data") != fingerprint:
            raise PlumbError(f"--resume: {last_ckpt} was trained on different data (or a different "
                             "max_length/tokenizer); resume with the same --data and settings.", exit_code=2)
        step = int(state["step"])
        checkpoint.set_rng_state(state["rng"])
        log(f"resumed from {last_ckpt} at step {step}")

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
        try:
            for k in range(cfg.grad_accum):
                micro = step * cfg.grad_accum + k
                epoch, pos = divmod(micro, len(groups))
                if epoch != order_epoch:
                    order_epoch, order = epoch, data.epoch_order(len(groups), cfg.seed, epoch, shuffle)
                idx = groups[order[pos]]
                ref = ref_all[idx].to(device) if ref_all is not None else None
                loss, stats, ntok = batch_loss(model, [examples[i] for i in idx], ref, cfg, pad_id, device, autocast)
                (loss / cfg.grad_accum).backward()
                micro_losses.append((loss.detach(), idx))
                tokens = tokens + ntok
                for key, value in stats.items():
                    sums[key] = sums.get(key, 0) + value.float() / cfg.grad_accum
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            finite = torch.isfinite(grad_norm) & torch.isfinite(torch.stack([m for m, _ in micro_losses])).all()
            if not bool(finite):  # the one sync per step; nothing has been applied yet
                bad = next((k for k, (m, _) in enumerate(micro_losses) if not torch.isfinite(m)), None)
                where = (f"micro-batch {bad} (rows {micro_losses[bad][1]})" if bad is not None
                         else "the gradient (loss finite)")
                keep = checkpoint.latest(out)
                raise PlumbError(
                    f"training stopped: non-finite loss or gradient at step {step + 1}, {where}; this step was not "
                    "applied. " + (f"The last good checkpoint is {keep} (resume with --resume after lowering "
                                   "--lr or raising --beta)." if keep else
                                   "No checkpoint was written yet; lower --lr or raise --beta and start again."))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        except RuntimeError as exc:
            if not _oom(exc):
                raise
            optimizer.zero_grad(set_to_none=True)
            keep = checkpoint.latest(out)
            raise PlumbError(
                f"out of memory at step {step + 1} on {device} with --batch-size {cfg.batch_size} and --max-length "
                f"{cfg.max_length}. Lower --batch-size (raise --grad-accum to keep the effective batch), lower "
                f"--max-length, or turn on gradient_checkpointing = true in the run config."
                + (f" The last checkpoint is {keep}; --resume continues from it." if keep else "")) from None
        step += 1
        if out_of_time(cfg, started, time.perf_counter() - t0):
            total = step  # the budget is spent: this step is the last, checkpointed and evaluated

        # log: one host sync for every metric of the step
        keys = list(sums)
        values = torch.stack([sums[k] for k in keys] + [grad_norm.float(), torch.as_tensor(tokens).float()
                                                        .to(grad_norm.device)]).tolist()
        metrics = dict(zip(keys, values[:-2]))
        elapsed = time.perf_counter() - t0
        metrics.update({"grad_norm": values[-2], "learning_rate": lr, "tokens_per_s": values[-1] / elapsed,
                        "peak_memory_mb": peak_memory_mb(device), "epoch": step * cfg.grad_accum / len(groups)})
        if eval_examples and cfg.eval_every and step % cfg.eval_every == 0 and step < total:
            metrics.update(evaluate(model, eval_examples, eval_ref, cfg, pad_id, device, autocast))
        if step == total and eval_examples:
            metrics.update(evaluate(model, eval_examples, eval_ref, cfg, pad_id, device, autocast))
        emit(Event("metric", run.run_id, step, total, values=metrics))
        end_step(ctx, step, total, cfg.checkpoint_every, save_checkpoint, log)

    adapter = write_adapter(model, tokenizer, out)
    if not metrics and eval_examples:  # resumed a finished run
        metrics = evaluate(model, eval_examples, eval_ref, cfg, pad_id, device, autocast)
    return RunResult(str(adapter), {**metrics, **{f"data/{k}": float(v) for k, v in counts.items()}},
                     [("adapter", str(adapter))])
