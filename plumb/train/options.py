"""The options of GRPO and of the Bradley-Terry reward model (light: pydantic only, no torch).

The plugins register these models as their methods' options, so ``plumb train
grpo -o beta=0.04`` is checked (unknown keys, types, ranges) before anything
loads (what rows a method trains on is its method object's ``data``,
``plumb.core.method``). The reasons behind the defaults are in ``plumb/train/grpo.py`` and
``plumb/train/reward_model.py``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from plumb.train import LORA_TARGETS


class _Common(BaseModel):
    """What every LoRA run shares with the DPO family (``runtime.load_policy``, ``runtime.get_lr``,
    ``checkpoint``) under the same names."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str
    steps: int | None = Field(None, ge=1)
    epochs: float = Field(1.0, gt=0)
    lr: float | None = Field(None, gt=0, le=1)
    schedule: Literal["cosine", "linear", "constant"] = "linear"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_targets: tuple[str, ...] = Field(LORA_TARGETS, min_length=1)
    gradient_checkpointing: bool = False
    seed: int = 0
    resume: bool = False
    checkpoint_every: int = Field(50, ge=1)
    keep_checkpoints: int = Field(3, ge=0)
    device: str | None = None
    time_limit_s: float | None = Field(None, gt=0)  # stop (with a checkpoint) once the next step would pass it
    init_adapter: str | None = None  # start the LoRA from this peft adapter's weights (same r and targets)

    DEFAULT_LR: ClassVar[float] = 1e-4

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else self.DEFAULT_LR

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class GRPOConfig(_Common):
    """GRPO on tasks with verifiable rewards (``plumb train grpo``)."""

    DEFAULT_LR: ClassVar[float] = 5e-4  # 5e-5 moved a simple reward by 0.01 in 24 steps on the starter (grpo.py)

    method: str = "grpo"
    rewards: dict[str, float] = Field(default_factory=dict)  # verifier -> weight (--reward NAME=WEIGHT)
    checks: list[dict[str, Any]] = Field(default_factory=list)  # the constitution's checks (set by the stage)
    num_generations: int = Field(4, ge=2)  # G: completions per prompt
    prompts_per_step: int = Field(2, ge=1)
    shuffle: bool = True  # each epoch's prompts in a seeded order (false: in file order, as TRL's shuffle_dataset)
    max_completion_length: int = Field(64, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    beta: float = Field(0.04, ge=0)  # KL leash (k3 estimate) to the adapter-off reference
    epsilon: float = Field(0.2, gt=0, lt=1)
    epsilon_high: float | None = Field(None, gt=0)  # DAPO's asymmetric clip (0.28); None = epsilon
    loss_type: Literal["dapo", "grpo", "dr_grpo"] = "dapo"
    scale_rewards: Literal["group", "batch", "none"] = "group"
    num_iterations: int = Field(1, ge=1)  # mu: updates per batch of rollouts
    mask_truncated_completions: bool = False
    batch_size: int = Field(8, ge=1)  # completions per forward/backward micro-batch
    # None: llama.cpp on a CPU, transformers on a GPU; "openai:URL[,URL...][#MODEL]": a pool of servers with
    # vLLM's runtime LoRA API (vLLM, `plumb serve`) that load the adapter after each update
    rollouts: str | None = None
    base_gguf: str | None = None  # the policy's base as GGUF for llama.cpp rollouts (default: made once)
    gap_every: int = Field(10, ge=0)  # measure the sampler/trainer log-prob gap every N steps (0: never)
    eval_every: int = Field(10, ge=0)  # held-out evaluation every N steps (0: at the end only)
    eval_prompts: int = Field(8, ge=1)  # held-out prompts per evaluation
    eval_samples: int = Field(2, ge=1)  # completions per held-out prompt
    holdout: float = Field(0.1, ge=0, lt=1)  # fraction of the tasks held out when no eval set is given
    zero_spread_patience: int = Field(10, ge=0)  # stop after this many steps in a row with nothing to learn
    judge: str | None = None  # a judge model spec: held-out answers judged against the base's, part of the signal
    constitution: dict[str, Any] | None = None  # what the judge reads (set by the train stage when judge is set)
    gguf: bool = False

    @field_validator("rollouts")
    @classmethod
    def _rollouts(cls, value: str | None) -> str | None:
        if value is None or value in ("llamacpp", "hf"):
            return value
        if value.startswith("openai:"):
            from plumb.serving.openai_chat import split_target

            if "+lora:" in value:
                raise ValueError("the rollouts' servers load the adapter being trained: give no +lora")
            split_target(value.removeprefix("openai:"))  # a bad URL fails here, before any work
            return value
        raise ValueError(f"{value!r}: expected llamacpp, hf, or openai:http://HOST:PORT/v1[,URL...][#MODEL]")

    @property
    def epsilon_upper(self) -> float:
        return self.epsilon_high if self.epsilon_high is not None else self.epsilon

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "GRPOConfig":
        return cls(**{**values, "method": "grpo"})


class RewardModelConfig(_Common):
    """A Bradley-Terry reward model: the policy's base + a scalar head + LoRA (``plumb train reward-model``)."""

    DEFAULT_LR: ClassVar[float] = 1e-4

    method: str = "reward-model"
    batch_size: int = Field(4, ge=1)  # pairs per micro-batch
    grad_accum: int = Field(1, ge=1)
    max_length: int = Field(1024, ge=8)
    margin: float = Field(0.0, ge=0)  # -log sigma(r_c - r_r - margin): a required gap
    center_coef: float = Field(0.0, ge=0)  # + coef * mean((r_c + r_r)^2): scores near 0 (TRL's center_rewards)
    eval_fraction: float = Field(0.1, ge=0, lt=1)  # pairs held out when no eval set is given
    eval_every: int = Field(0, ge=0)
    shuffle: bool = True
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RewardModelConfig":
        return cls(**{**values, "method": "reward-model"})
