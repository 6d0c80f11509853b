"""Checkpoints that survive a crash at any moment, and resume from them.

A checkpoint is ``OUT/checkpoints/step-N/`` holding the peft adapter
(``adapter/``), the optimizer state, the RNG states, the data position and the
run's config (``state.json``). It is written into a temporary directory and
renamed into place, so a process killed mid-write leaves the previous
checkpoints intact and never a half one under a ``step-N`` name. Older
checkpoints are removed only after a newer one is complete.

The learning-rate schedule is a pure function of the step (see runtime.get_lr),
so the step number is the scheduler's whole state.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch

from plumb.core.checkpoints import PREFIX, checkpoints, latest  # noqa: F401  (the layout is core's)
from plumb.core.errors import PlumbError


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(out_dir: str | Path, step: int, model, optimizer, state: dict[str, Any], keep: int = 3) -> Path:
    """Write checkpoint ``step`` atomically; keep the newest ``keep`` (0 = all)."""
    root = Path(out_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step}"
    tmp = root / f".tmp-{PREFIX}{step}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    model.save_pretrained(tmp / "adapter")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(rng_state(), tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=2, default=str))
    if final.exists():  # a re-run of the same step: replace it only now that the new one is whole
        old = root / f".old-{PREFIX}{step}-{os.getpid()}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    if keep > 0:
        for old in checkpoints(out_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load(path: Path, model, optimizer) -> dict[str, Any]:
    """Restore adapter weights and optimizer state; return state.json (RNG is
    restored separately, at the moment the loop resumes)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    try:
        state = json.loads((path / "state.json").read_text())
        weights = load_file(str(path / "adapter" / "adapter_model.safetensors"))
        set_peft_model_state_dict(model, weights)
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
        state["rng"] = torch.load(path / "rng.pt", weights_only=False)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise PlumbError(f"cannot resume from {path}: {exc}. Delete that checkpoint directory to resume from "
                         "the one before it.") from None
    return state
