"""What every training loop shares: the start, the policy, the schedule, the stops and the writes.

Each loop (``loop.py`` for the DPO family and SFT, ``grpo.py``, ``reward_model.py``)
reads top to bottom and calls these in the same order:

    job = start(run, ctx, cfg)                 # seeds, device, autocast, OUT/, the event sink
    model, tokenizer = policy(job, given)      # HF causal LM + LoRA (or the caller's)
    params, optimizer = optimizer_for(model, cfg)
    step = resume(job, model, optimizer, fingerprint, "...")   # 0, or the checkpoint's step
    while step < total:
        lr = get_lr(step, total, cfg)
        with oom_stop(job, step, "...", optimizer): ...   # micro-steps, clip, step
        raise nonfinite(job, step, "...", "...")       # when the loss or gradient is not finite
        end_step(job, ctx, step, total, every, save)
    write_adapter(job, model, tokenizer)
"""

from __future__ import annotations

import math
import random
import resource
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from plumb.core.context import Cancelled
from plumb.core.errors import PlumbError
from plumb.core.records import Event, RunSpec
from plumb.train import checkpoint
from plumb.train.distributed import World, join


# -- the start: seeds, device, autocast, the output directory, the event sink ----------------------------


@dataclass
class Job:
    """One run as a loop sees it: its spec and validated config, ``OUT/``, the event sink, the device, an
    autocast factory and its place among the ranks (``distributed.World``)."""

    run: RunSpec
    cfg: Any
    out: Path
    emit: Callable[[Event], None]
    device: str
    autocast: Callable[[], Any]
    world: World

    def log(self, message: str) -> None:
        self.emit(Event("log", self.run.run_id, message=message))


def runtime(cfg) -> tuple[str, Any]:
    """Seed Python's and torch's RNGs from ``cfg.seed``; the device (``cfg.device``, else CUDA when there is
    one) and an autocast factory (bf16 on a CUDA device that has it, else a no-op)."""
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    use_bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported()

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else nullcontext()

    return device, autocast


def start(run: RunSpec, ctx, cfg) -> Job:
    """Every loop starts here: ``runtime``, the process group under torchrun (``distributed.join``),
    ``OUT/`` made, events to ``ctx`` from rank 0 (nowhere from the other ranks, or without a ``ctx``)."""
    device, autocast = runtime(cfg)
    world, device = join(device)
    out = Path(run.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    emit = ctx.emit if ctx is not None and world.main else (lambda event: None)
    return Job(run, cfg, out, emit, device, autocast, world)


# -- the policy: HF model + LoRA ---------------------------------------------------------------------------


def load_policy(target: str, cfg, device: str, task: str = "CAUSAL_LM"):
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


def policy(job: Job, given: tuple[Any, Any] | None, task: str = "CAUSAL_LM") -> tuple[Any, Any]:
    """``given`` (peft model, tokenizer), else the run's HF policy loaded with a LoRA adapter."""
    if given is not None:
        return given
    if job.run.policy.backend != "hf":
        raise PlumbError(f"training needs an HF model (hf:DIR or starter), not {job.run.policy}.", exit_code=2)
    return load_policy(job.run.policy.target, job.cfg, job.device, task)


def optimizer_for(model, cfg) -> tuple[list[torch.nn.Parameter], torch.optim.Optimizer]:
    """(trainable parameters, AdamW over them); the lr is set each step from ``get_lr``."""
    params = [p for p in model.parameters() if p.requires_grad]
    return params, torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(0.9, 0.999), eps=1e-8,
                                     weight_decay=cfg.weight_decay)


def resume(job: Job, model, optimizer, fingerprint: str, mismatch: str) -> dict[str, Any] | None:
    """With ``cfg.resume``: the newest checkpoint's weights, optimizer state and RNG restored, and its
    state.json returned (``step`` and what the loop saved); None for a fresh start. A checkpoint of other
    data (another ``fingerprint``) is refused with ``mismatch``."""
    if not job.cfg.resume:
        return None
    last = checkpoint.latest(job.out)
    if last is None:
        raise PlumbError(f"--resume: no checkpoint in {job.out / 'checkpoints'}; start without --resume.",
                         exit_code=2)
    state = checkpoint.load(last, model, optimizer)
    if state.get("data") != fingerprint:
        raise PlumbError(f"--resume: {last} was trained on {mismatch}.", exit_code=2)
    checkpoint.set_rng_state(state["rng"])
    job.log(f"resumed from {last} at step {state['step']}")
    return state


# -- each step: the lr, the time budget, memory, the stops -------------------------------------------------


def get_lr(step: int, total: int, cfg) -> float:
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


def out_of_time(cfg, started: float, step_seconds: float) -> bool:
    """True when ``cfg.time_limit_s`` is set and another step like the last would pass it."""
    limit = getattr(cfg, "time_limit_s", None)
    return bool(limit) and time.perf_counter() - started + step_seconds > limit


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory error (CUDA's, or the CPU allocator's RuntimeError)."""
    text = str(exc).lower()
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


def _last_checkpoint(job: Job, found: str, missing: str) -> str:
    keep = checkpoint.latest(job.out)
    return found.format(keep=keep) if keep else missing


@contextmanager
def oom_stop(job: Job, step: int, what: str, optimizer) -> Iterator[None]:
    """Turn an out-of-memory error in the block into a PlumbError: at step ``step + 1`` on the device,
    ``what`` (the sizes and the knobs that lower them), and the checkpoint --resume continues from."""
    try:
        yield
    except RuntimeError as exc:
        if not is_oom(exc):
            raise
        optimizer.zero_grad(set_to_none=True)
        raise PlumbError(f"out of memory at step {step + 1} on {job.device} {what}"
                         + _last_checkpoint(job, " The last checkpoint is {keep}; --resume continues from it.", "")
                         ) from None


def nonfinite(job: Job, step: int, where: str, fix: str) -> PlumbError:
    """The error that stops a run whose loss or gradient is not finite at step ``step + 1`` (``where``
    names the micro-batch or iteration); ``fix`` (imperative) is what to change before going on."""
    return PlumbError(f"training stopped: non-finite loss or gradient at step {step + 1}{where}; this step was not "
                      "applied. " + _last_checkpoint(job, f"The last good checkpoint is {{keep}}: {fix}, then resume "
                                                          "with --resume.",
                                                     f"No checkpoint was written yet: {fix}, then start again."))


def end_step(job: Job, ctx, step: int, total: int, every: int, save) -> None:
    """After a step: a checkpoint (``save(step)``, by rank 0) every ``every`` steps, at the last one and when
    a cancel was asked (of any rank); a cancel then stops the run with ``Cancelled`` on every rank, and resume
    continues from that checkpoint."""
    stop = job.world.any(ctx is not None and ctx.cancelled())
    if (step % every == 0 or step == total or stop) and job.world.main:
        job.log(f"checkpoint {save(step)}")
    if stop and step < total:
        raise Cancelled(f"stopped at step {step} of {total}; the checkpoint is in {job.out / 'checkpoints'} "
                        "and resume continues from it.")


def write_adapter(job: Job, model, tokenizer, files: dict[str, str] | None = None) -> Path:
    """The adapter (peft format, loads with ``PeftModel.from_pretrained``) and the tokenizer into
    ``OUT/adapter``, written beside it and then renamed, so a crash never leaves half an adapter; ``files``
    (name -> text) are written into it too. Rank 0 writes; every rank returns once it is there."""
    import shutil

    adapter, tmp = job.out / "adapter", job.out / ".adapter.tmp"
    if not job.world.main:
        job.world.barrier()
        return adapter
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    for name, text in (files or {}).items():
        (tmp / name).write_text(text)
    if adapter.exists():
        shutil.rmtree(adapter)
    tmp.rename(adapter)
    job.world.barrier()
    return adapter
