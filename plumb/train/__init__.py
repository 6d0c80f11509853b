"""LoRA preference optimization on torch + transformers + peft, by hand.

One training function (``plumb.train.loop.train``) runs every method of the
DPO family — ``dpo`` (sigmoid), ``ipo``, ``hinge``, ``kto``, ``orpo`` — and
plain ``sft``, nanoGPT style: read it top to bottom. The pieces:

    data.py        chat template, TRL-compatible tokenization, collators
    losses.py      pure functions on log-probs (no model in sight)
    logps.py       answer-token log-probs through a chunked, memory-light LM head
    runtime.py     what every loop shares: start, policy + LoRA, lr schedule, resume, stops
    loop.py        the DPO family's and SFT's loop, metrics, evaluation
    checkpoint.py  atomic checkpoints and resume

This module is light on purpose (no torch): the CLI and the method registry
read ``TrainConfig`` (a pydantic model: the methods' registered options)
without importing torch.

Defaults, and why
-----------------
* **Learning rate 5e-5 for the preference losses, 2e-4 for SFT and ORPO.** TRL's
  DPO default (1e-6, and 5e-7 in the DPO paper) is for *full* fine-tuning. A
  LoRA adapter starts at zero (B = 0) and moves a low-rank slice of the weights,
  so it needs one to two orders of magnitude more: 5e-5..2e-4 is the range the
  field uses for LoRA. SFT and ORPO (which carries an NLL term) take the usual
  LoRA SFT rate.
* **beta 0.1** (TRL's default) for DPO/IPO/hinge/KTO; for ORPO it is lambda,
  the weight of the odds-ratio term (0.1 as in the ORPO paper and TRL).
* **LoRA r 16, alpha 32, dropout 0.05 on q,k,v,o,gate,up,down.**
* **Warmup 10% then cosine**, AdamW (0.9, 0.999, eps 1e-8, no weight decay),
  gradient clipping at 1.0, 4 pairs per micro-batch.
* **Reference log-probs precomputed once** before training (the reference is
  the policy with its adapter disabled, so it never changes): the per-step
  reference forward disappears, a quarter of a DPO step's compute (it pays off
  from the second epoch on; ``precompute_ref = false`` runs it in every step).
* **Shared-prompt pairs** (``shared_prompt``): chosen and rejected go through
  the model as one row with the prompt computed once; same numbers, less work.
* **No activation checkpointing** (TRL turns it on by default): faster, more
  memory; ``gradient_checkpointing = true`` when memory is short.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

METHODS = {
    "dpo": "DPO (sigmoid loss, optional label smoothing / robust) on chosen/rejected pairs, LoRA",
    "ipo": "IPO (squared loss on length-normalized log-ratios) on pairs, LoRA",
    "hinge": "SLiC hinge loss on pairs, LoRA",
    "kto": "KTO on unpaired good/bad completions (KL from mismatched pairs), LoRA",
    "orpo": "ORPO: NLL on chosen + odds-ratio term, no reference model, LoRA",
    "sft": "Supervised fine-tuning on prompt -> answer (loss on the answer only), LoRA",
}
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class TrainConfig(BaseModel):
    """Every hyperparameter of a run; saved in each checkpoint. Unknown keys, wrong
    types and out-of-range values are refused (the method's registered options)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str = "dpo"
    steps: int | None = Field(None, ge=1)  # optimizer steps; None = `epochs` passes over the data
    epochs: float = Field(1.0, gt=0)
    batch_size: int = Field(4, ge=1)  # pairs (or examples) per micro-batch
    grad_accum: int = Field(1, ge=1)
    lr: float | None = Field(None, gt=0, le=1)  # None = 5e-5 (preference losses) or 2e-4 (sft, orpo)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    beta: float = Field(0.1, gt=0)
    loss_type: Literal["sigmoid", "robust", "ipo", "hinge"] | None = None  # defaults from the method
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)  # cDPO (sigmoid) / robust DPO
    rpo_alpha: float | None = Field(None, ge=0)  # dpo family: + alpha * NLL on chosen (RPO; TRL's rpo_alpha)
    content_weight: float = Field(1.0, gt=0, le=1)  # sft: the weight of an answer's tokens before its last
    # (the end-of-answer token weighs 1): below 1 teaches where to stop more than what to say
    anchor: float = Field(0.0, ge=0)  # sft: + anchor * KL(base || policy) over the vocabulary at each of those
    # tokens (the base is the model with the adapter off): the words stay the base's where only the end moves
    desirable_weight: float = Field(1.0, gt=0)  # kto
    undesirable_weight: float = Field(1.0, gt=0)  # kto
    max_length: int = Field(1024, ge=8)
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    lora_targets: tuple[str, ...] = Field(LORA_TARGETS, min_length=1)
    precompute_ref: bool = True
    shared_prompt: bool = True  # chosen + rejected in one row, the prompt computed once (see data.collate_shared)
    gradient_checkpointing: bool = False
    seed: int = 0
    shuffle: bool = True
    resume: bool = False  # continue from the newest checkpoint in the output directory
    checkpoint_every: int = Field(100, ge=1)
    keep_checkpoints: int = Field(3, ge=0)
    eval_every: int = Field(0, ge=0)  # 0 = evaluate at the end only
    device: str | None = None  # None = cuda when present, else cpu
    gguf: bool = False
    time_limit_s: float | None = Field(None, gt=0)  # stop (with a checkpoint) once the next step would pass it
    init_adapter: str | None = None  # start the LoRA from this peft adapter's weights (same r and targets)

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return 2e-4 if self.method in ("sft", "orpo") else 5e-5

    @property
    def loss(self) -> str:
        if self.loss_type:
            return self.loss_type
        return {"dpo": "sigmoid", "ipo": "ipo", "hinge": "hinge"}.get(self.method, self.method)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build from a dict (a TOML run config, ``RunSpec.config``); every problem is reported by key."""
        from plumb.core.options import validate_options

        method = values.get("method", "dpo")
        return cls(**validate_options(_Options(method, cls), values))


@dataclass(frozen=True)
class _Options:  # what validate_options needs of a registry entry
    name: str
    impl: Any


def train(run, **kwargs):
    """Run one training job; see ``plumb.train.loop.train`` (imports torch)."""
    from plumb.train.loop import train as _train

    return _train(run, **kwargs)
