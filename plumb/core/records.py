"""Plain records passed through the hooks.

Plugins take records and return records; they never touch the store. Every
record is a frozen-ish dataclass of plain Python values so it can be logged,
stored as JSON and sent to a child process without surprises.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Message:
    role: Role
    content: str


@dataclass(frozen=True)
class Chat:
    """A conversation to be continued by the assistant (it does not end with
    the answer being asked for)."""

    messages: tuple[Message, ...]

    @classmethod
    def from_user(cls, text: str, system: str | None = None) -> "Chat":
        msgs = [Message("system", system)] if system else []
        return cls(tuple(msgs + [Message("user", text)]))

    @classmethod
    def from_dicts(cls, items: list[dict[str, str]]) -> "Chat":
        return cls(tuple(Message(m["role"], m["content"]) for m in items))  # type: ignore[arg-type]

    def to_dicts(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.content} for m in self.messages]

    @property
    def last_user(self) -> str:
        for m in reversed(self.messages):
            if m.role == "user":
                return m.content
        return ""


@dataclass(frozen=True)
class ModelSpec:
    """One string names a model everywhere: ``llamacpp:PATH.gguf[+lora:A.gguf]``,
    ``hf:DIR_OR_ID``, ``anthropic:NAME``, ``openai:URL``. See core/models.py."""

    backend: str
    target: str
    lora: str | None = None
    lora_scale: float = 1.0

    def __str__(self) -> str:
        s = f"{self.backend}:{self.target}"
        return s + (f"+lora:{self.lora}" if self.lora else "")


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 0.8
    top_p: float = 0.95
    max_tokens: int = 256
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # top-k logprobs per generated token, if wanted

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Completion:
    text: str
    model: str
    backend: str
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # per generated token: {token_text: logprob} of the top-k alternatives
    top_logprobs: list[dict[str, float]] | None = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Critique:
    principle_id: str
    critique: str
    revision: str
    critic: str


@dataclass
class Judgment:
    winner: Literal["a", "b", "tie"]
    p_a: float | None  # probability that A is better, after debiasing
    judge: str  # "human" or a model spec
    swap_agree: bool | None = None
    reason: str = ""


@dataclass(frozen=True)
class Pair:
    prompt: Chat
    chosen: str
    rejected: str


@dataclass(frozen=True)
class Task:
    """A prompt with what a verifier needs to score an answer to it."""

    prompt: Chat
    tests: str | None = None
    answer: str | None = None
    schema: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Reward:
    name: str
    value: float
    detail: str = ""


@dataclass
class Event:
    """A progress or metric event. ``kind`` is "progress", "metric" or "log"."""

    kind: str
    run_id: int | None = None
    step: int | None = None
    total: int | None = None
    values: dict[str, float] = field(default_factory=dict)
    message: str = ""


EventSink = Callable[[Event], None]


def _drop(event: Event) -> None:
    return None


@dataclass
class Run:
    """What an optimizer is asked to do. ``data`` is the list of training
    examples in the method's shape (Pair for preference methods, dicts for
    others); ``config`` holds the hyperparameters; ``emit`` receives events."""

    method: str
    policy: ModelSpec
    data: list[Any]
    out_dir: str
    config: dict[str, Any] = field(default_factory=dict)
    run_id: int | None = None
    eval_data: list[Any] = field(default_factory=list)
    emit: EventSink = _drop


@dataclass
class RunResult:
    adapter_dir: str
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: list[tuple[str, str]] = field(default_factory=list)  # (kind, path)
