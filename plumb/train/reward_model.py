"""A Bradley-Terry reward model: the policy's base, a scalar head and a LoRA adapter.

    from plumb.train.reward_model import train, score_texts
    result = train(RunSpec("reward-model", ModelSpec("hf", DIR), pairs, "out/"), ctx)
    score_texts(result.adapter_dir, [messages, ...], ["an answer", ...])   # one float per answer

The model reads ``prompt + answer`` (the chat template, EOS appended: the
same tokens as DPO training) and its score is a linear head on the last
token's hidden state. Training is the seeds' maximum likelihood under
Bradley-Terry, ``P(chosen > rejected) = sigma(r_c - r_r)``, i.e.
``loss = -log sigma(r_c - r_r)``, with what the data and TRL's RewardTrainer add:

* soft labels: a pair's ``p`` (the chosen answer's probability of being
  better, as the judge stores it; 1 when absent) is the BT target,
  ``-[p log sigma(d - m) + (1 - p) log sigma(-d - m)]`` with ``d = r_c - r_r``;
  a tie (p = 0.5) pulls the two scores together;
* a margin ``m`` (the ``margin`` option, or a pair's own ``margin``): chosen must
  win by at least that much (Llama 2's margin loss);
* ``center_coef``: + coef x mean((r_c + r_r)^2), keeping scores near 0 (TRL's
  ``center_rewards_coefficient``).

Held-out pair accuracy (``eval/accuracy``: r_c > r_r on pairs with p > 0.5)
is reported on the eval set, or on ``eval_fraction`` of the pairs held out.
The machinery is every loop's (``runtime.py``): ``load_policy`` (with ``task =
"SEQ_CLS"``: peft trains the head with the LoRA, and saves both), ``get_lr``,
checkpoints and resume, the NaN and OOM stops. The result is a directory (the peft adapter plus
``reward_model.json``) that the ``reward-model`` verifier loads.

Defaults: lr 1e-4 (LoRA; the head starts random), 4 pairs a step, cosine with
10% warmup, LoRA dropout 0.05, one epoch.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from plumb.core.errors import PlumbError
from plumb.core.records import Event, RunResult, RunSpec
from plumb.train import checkpoint, data
from plumb.train.runtime import (end_step, get_lr, nonfinite, oom_stop, optimizer_for, peak_memory_mb,
                                 policy as policy_of, resume, start, write_adapter)
from plumb.train.options import RewardModelConfig

MIN_PAIRS = 8
META = "reward_model.json"


def bt_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, p: torch.Tensor | None = None,
            margin: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Per-pair Bradley-Terry loss; with p = 1 and no margin, the seeds' ``-log sigma(r_c - r_r)``."""
    d = r_chosen - r_rejected
    if p is None:
        return -F.logsigmoid(d - margin)
    return -(p * F.logsigmoid(d - margin) + (1 - p) * F.logsigmoid(-d - margin))


def head(model):
    base = model.get_base_model()
    return base.score if hasattr(base, "score") else base.classifier


def scores(model, batch: dict[str, Any]) -> torch.Tensor:
    """One scalar per row: the head on the hidden state of the row's last token (right padding)."""
    base = model.get_base_model()
    decoder = getattr(base, base.base_model_prefix)
    hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     use_cache=False).last_hidden_state
    last = batch["attention_mask"].sum(1) - 1
    return head(model)(hidden[torch.arange(hidden.shape[0], device=hidden.device), last]).squeeze(-1).float()


# -- data: pairs with their soft label and margin ------------------------------------------------------


def prepare(rows: list[dict[str, Any]], tokenizer, max_length: int) -> tuple[list[tuple], dict[str, int]]:
    """[(Example, p, margin)] for the rows that can train (the DPO tokenization), and the drop counts."""
    out, counts = [], {"rows": len(rows)}
    for row in rows:
        prep = data.prepare([row], tokenizer, "dpo", max_length)
        for k, v in prep.counts.items():
            if k != "rows":
                counts[k] = counts.get(k, 0) + v
        if prep.examples:
            p = float(row.get("p", 1.0) if row.get("p") is not None else 1.0)
            out.append((prep.examples[0], p, float(row.get("margin", 0.0) or 0.0)))
    return out, counts


def pair_batch(items: list[tuple], pad_id: int, device: str) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    b = data.collate([(e.prompt, e.answers[0]) for e, _, _ in items] + [(e.prompt, e.answers[1]) for e, _, _ in items],
                     pad_id)
    b = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in b.items()}
    return (b, torch.tensor([p for _, p, _ in items], device=device),
            torch.tensor([m for _, _, m in items], device=device))


@torch.no_grad()
def evaluate(model, items, cfg: RewardModelConfig, pad_id, device) -> dict[str, float]:
    was_training = model.training
    model.eval()
    rc, rr, ps, loss = [], [], [], 0.0
    for i in range(0, len(items), cfg.batch_size):
        b, p, m = pair_batch(items[i:i + cfg.batch_size], pad_id, device)
        c, r = scores(model, b).chunk(2)
        loss += float(bt_loss(c, r, p, cfg.margin + m).sum())
        rc.append(c), rr.append(r), ps.append(p)
    model.train(was_training)
    c, r, p = torch.cat(rc), torch.cat(rr), torch.cat(ps)
    decided = p > 0.5
    acc = float((c[decided] > r[decided]).float().mean()) if bool(decided.any()) else math.nan
    return {"eval/loss": loss / len(items), "eval/accuracy": acc, "eval/margin": float((c - r).mean())}


# -- the run ------------------------------------------------------------------------------------------


def train(run: RunSpec, ctx=None, *, policy: tuple[Any, Any] | None = None) -> RunResult:
    """Train a reward model on the pairs in ``run.data``; write it to ``run.out_dir/adapter``."""
    cfg = RewardModelConfig.from_dict(run.config)
    job = start(run, ctx, cfg)
    out, log, device, autocast = job.out, job.log, job.device, job.autocast

    if len(run.data) + len(run.eval_data) < MIN_PAIRS:
        raise PlumbError(f"a reward model needs at least {MIN_PAIRS} preference pairs; got "
                         f"{len(run.data) + len(run.eval_data)}. Import or judge more (`plumb data import`, "
                         "`plumb judge`, `plumb pairs build`).", exit_code=2)
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "score.weight newly initialized": yes, that is the head
    try:
        model, tokenizer = policy_of(job, policy, task="SEQ_CLS")
    finally:
        hf_logging.set_verbosity(before)
    torch.manual_seed(cfg.seed)
    with torch.no_grad():  # a seeded head (runs repeat exactly), small: the first scores are near 0
        for name, p in model.named_parameters():
            if not p.requires_grad or "lora_" in name:
                continue
            if p.dim() > 1:
                p.normal_(0.0, 1 / math.sqrt(p.shape[-1] + 1))
            else:
                p.zero_()
    pad_id = tokenizer.pad_token_id

    items, counts = prepare(run.data, tokenizer, cfg.max_length)
    held, _ = prepare(run.eval_data, tokenizer, cfg.max_length)
    if not held and cfg.eval_fraction and len(items) >= MIN_PAIRS:
        order = list(range(len(items)))
        random.Random(cfg.seed).shuffle(order)
        cut = max(1, round(cfg.eval_fraction * len(items)))
        held, items = [items[i] for i in sorted(order[:cut])], [items[i] for i in sorted(order[cut:])]
    if len(items) < MIN_PAIRS // 2:
        raise PlumbError(f"only {len(items)} usable pairs to train the reward model on ({counts}); it needs at "
                         f"least {MIN_PAIRS // 2} after holding out {len(held)}.", exit_code=2)
    groups = data.groups(len(items), cfg.batch_size, cfg.seed, cfg.shuffle)
    job.world.check_batches(groups, cfg.batch_size)
    total = cfg.steps or max(1, math.ceil(cfg.epochs * len(groups) / cfg.grad_accum))
    log(f"{len(items)} pairs to train on, {len(held)} held out")

    params, optimizer = optimizer_for(model, cfg)
    fingerprint = hashlib.sha256(repr([(e.prompt, e.answers, p, m) for e, p, m in items]).encode()).hexdigest()[:16]
    job.world.same(fingerprint, "training pairs")
    state = resume(job, model, optimizer, fingerprint, "other pairs; resume with the same data")
    step = int(state["step"]) if state else 0

    def save_checkpoint(step: int) -> Path:
        return checkpoint.save(out, step, model, optimizer, {"data": fingerprint, "config": cfg.to_dict()},
                               keep=cfg.keep_checkpoints)

    model.train()
    metrics: dict[str, float] = {}
    order_epoch, order = -1, []
    while step < total:
        t0 = time.perf_counter()
        lr = get_lr(step, total, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        sums: dict[str, float] = {}
        finite, tokens, rewards = True, 0, []
        with oom_stop(job, step, f"with --batch-size {cfg.batch_size} and --max-length {cfg.max_length}: lower "
                      "either, or set gradient_checkpointing = true.", optimizer):
            for k in range(cfg.grad_accum):
                epoch, pos = divmod(step * cfg.grad_accum + k, len(groups))
                if epoch != order_epoch:
                    order_epoch, order = epoch, data.epoch_order(len(groups), cfg.seed, epoch, cfg.shuffle)
                idx = job.world.shard(groups[order[pos]])  # this rank's pairs of the micro-batch
                share = len(idx) / len(groups[order[pos]]) / cfg.grad_accum  # of the step's mean
                b, p, m = pair_batch([items[i] for i in idx], pad_id, device)
                with autocast():
                    c, r = scores(model, b).chunk(2)
                loss = bt_loss(c, r, p, cfg.margin + m).mean()
                if cfg.center_coef:
                    loss = loss + cfg.center_coef * ((c + r) ** 2).mean()
                (loss * share).backward()
                finite = finite and bool(torch.isfinite(loss))
                tokens += int(b["attention_mask"].sum())
                rewards.append(torch.cat([c, r]).detach())
                for key, value in (("loss", loss), ("accuracy", (c > r).float().mean()), ("margin", (c - r).mean())):
                    sums[key] = sums.get(key, 0.0) + float(value.detach()) * share
            job.world.sum_gradients(params)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            if not (finite and torch.isfinite(grad_norm)):
                raise nonfinite(job, step, "", "lower --lr")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        step += 1
        r_all, = job.world.cat(torch.cat(rewards))  # every rank's scores
        totals = job.world.sum_(torch.tensor([*sums.values(), tokens], dtype=torch.float64)).tolist()
        sums, tokens = dict(zip(sums, totals)), totals[-1]
        metrics = {**sums, "min_reward": float(r_all.min()), "mean_reward": float(r_all.mean()),
                   "max_reward": float(r_all.max()), "grad_norm": float(grad_norm), "learning_rate": lr,
                   "tokens_per_s": tokens / (time.perf_counter() - t0), "peak_memory_mb": peak_memory_mb(device),
                   "epoch": step * cfg.grad_accum / len(groups)}
        evaluating = held and job.world.main  # rank 0 alone; the others wait at the next sum
        if evaluating and ((cfg.eval_every and step % cfg.eval_every == 0) or step == total):
            metrics.update(evaluate(model, held, cfg, pad_id, device))
        job.emit(Event("metric", run.run_id, step, total, values=metrics))
        end_step(job, ctx, step, total, cfg.checkpoint_every, save_checkpoint)

    # the reward model: the peft adapter (LoRA + head) and what the verifier needs to load it
    meta = {"format": "plumb-reward-model/1", "base": str(run.policy.target), "max_length": cfg.max_length,
            "metrics": metrics}
    adapter = write_adapter(job, model, tokenizer, {META: json.dumps(meta, indent=2)})
    if not metrics and held and job.world.main:  # resumed a finished run
        metrics = evaluate(model, held, cfg, pad_id, device)
    return RunResult(str(adapter), {**metrics, **{f"data/{k}": float(v) for k, v in counts.items()}},
                     [("reward-model", str(adapter))])


# -- scoring with a trained reward model ---------------------------------------------------------------

_LOADED: dict[tuple[str, float], tuple[Any, Any, dict[str, Any]]] = {}


def resolve(path: str | Path) -> Path:
    """The reward model directory for ``path`` (the directory itself or a run directory holding ``adapter/``)."""
    p = Path(path).expanduser()
    for d in (p, p / "adapter"):
        if (d / META).is_file():
            return d.resolve()
    raise PlumbError(f"no reward model at {path}: expected a directory with {META} (what `plumb train "
                     "reward-model` writes to OUT/adapter).", exit_code=2)


def load(path: str | Path) -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, meta) of a trained reward model, cached per process."""
    d = resolve(path)
    key = (str(d), (d / META).stat().st_mtime)
    if key not in _LOADED:
        from peft import PeftModel
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        meta = json.loads((d / META).read_text())
        before = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            base = AutoModelForSequenceClassification.from_pretrained(meta["base"], dtype=torch.float32, num_labels=1)
        except OSError as exc:
            raise PlumbError(f"reward model {d}: cannot load its base model {meta['base']}: {exc}.") from None
        finally:
            hf_logging.set_verbosity(before)
        with warnings.catch_warnings():  # peft 0.21 reads transformers 5's deprecated is_gradient_checkpointing
            warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated", category=FutureWarning)
            model = PeftModel.from_pretrained(base, d).eval()
        tokenizer = AutoTokenizer.from_pretrained(d)
        _LOADED[key] = (model, tokenizer, meta)
    return _LOADED[key]


@torch.no_grad()
def score_texts(path: str | Path, prompts: list[list[dict[str, str]]], texts: list[str],
                batch_size: int = 16) -> list[float]:
    """The reward model's score for each (prompt messages, answer), batched."""
    model, tokenizer, meta = load(path)
    device = next(model.parameters()).device.type
    seqs = []
    for messages, text in zip(prompts, texts):
        prompt, answers, _ = data.tokenize(tokenizer, messages, [text])
        seqs.append(data._fit(prompt, answers, int(meta.get("max_length", 1024)))[:2])
    out: list[float] = []
    for i in range(0, len(seqs), batch_size):
        b = data.collate([(p, a[0]) for p, a in seqs[i:i + batch_size]], tokenizer.pad_token_id)
        out += scores(model, {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in b.items()}).tolist()
    return out
