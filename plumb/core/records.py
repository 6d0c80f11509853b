"""Plain records passed through the hooks.

Plugins take records and return records; they never touch the store. Every
record is a frozen-ish dataclass of plain Python values so it can be logged,
stored as JSON and sent to a child process without surprises.
"""

from __future__ import annotations

import time
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
    ``hf:DIR_OR_ID``, ``anthropic:NAME``, ``openai:URL``. See core/specs.py."""

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
    # per generated token (when log-probs were asked for): the sampled token's log-prob under the model at
    # temperature 1, as OpenAI's ``logprobs.content[i].logprob``
    token_logprobs: list[float] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    token_ids: list[int] | None = None  # the sampled tokens' ids, where the backend says them (with log-probs)


@dataclass
class Critique:
    """One critique-and-revision round of a draft against one principle."""

    principle_id: str
    critique: str
    revision: str
    critic: str
    round: int = 1
    flags: tuple[str, ...] = ()  # why the revision must not be used as chosen (empty, repeats draft, ...)


Verdict = Literal["a", "b", "tie"]


@dataclass
class Judgment:
    """A pairwise verdict, asked in both orders when a model judges.

    ``ab`` is the verdict with the answers shown as (A=a, B=b), ``ba`` with
    them swapped and mapped back to a/b; ``p_a_ab``/``p_a_ba`` the probability
    that *a* is better in each order (from option log-probs, or 1/0/0.5 parsed
    from text). ``p_a`` is the debiased combination (the mean of the two) and
    ``winner`` the decision; a pair whose two orders disagree is not a
    preference (``consistent`` False, ``winner`` "tie").
    """

    winner: Verdict
    p_a: float | None  # probability that A is better, after debiasing
    judge: str  # "human", "import", "checks", or a model spec
    source: Literal["human", "model", "import", "checks"] = "model"
    ab: Verdict | None = None
    ba: Verdict | None = None
    p_a_ab: float | None = None
    p_a_ba: float | None = None
    raw_ab: str | None = None
    raw_ba: str | None = None
    principle_id: str | None = None  # None = the whole rubric
    reason: str = ""

    @property
    def consistent(self) -> bool | None:
        if self.ab is None or self.ba is None:
            return None
        return self.ab == self.ba


@dataclass(frozen=True)
class CritiqueRequest:
    """A draft answer to critique and revise: ``rounds`` rounds, each on the
    previous revision. ``principles`` names the principle of each round (cycled
    when shorter); empty: the plugin picks one per round, by weight."""

    chat: Chat
    draft: str
    principles: tuple[str, ...] = ()
    rounds: int = 2


@dataclass(frozen=True)
class JudgeRequest:
    """Two answers to one chat, to be compared against the constitution (or one principle)."""

    chat: Chat
    a: str
    b: str
    principle_id: str | None = None


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

    @property
    def check(self) -> dict[str, Any] | None:
        """The constitution check this task asks for: {"verifier": NAME, "params": {...}}, if any."""
        return self.meta.get("check")

    @property
    def params(self) -> dict[str, Any]:
        """The parameters of the check this task asks for ({} when none)."""
        return dict((self.check or {}).get("params", {}))


RewardStatus = Literal["ok", "error", "timeout"]


@dataclass
class Reward:
    """A verifier's score for one completion. ``status`` is "ok" when the
    verifier ran (a wrong answer is ok with value 0), "error" when it failed
    (it raised, or could not run the code), "timeout" when it ran out of time."""

    name: str
    value: float
    detail: str = ""
    status: RewardStatus = "ok"
    seconds: float = 0.0


EventKind = Literal["stage", "progress", "metric", "log", "done", "error"]
EVENT_KINDS: tuple[str, ...] = ("stage", "progress", "metric", "log", "done", "error")


@dataclass
class Event:
    """Something a UI shows about long work. ``kind`` is one of ``EVENT_KINDS``:

    * ``stage``    a named stage starts (``stage``, ``message``)
    * ``progress`` ``step`` of ``total`` units of the current stage done
    * ``metric``   per-step ``values`` of a run (loss, rewards/accuracies, ...)
    * ``log``      a line of text
    * ``done``     the work finished (``values``: final metrics)
    * ``error``    the work failed (``message``: why)

    Events are plain values: ``to_json``/``from_json`` carry them across a
    process boundary as JSON lines (plumb.core.events).
    """

    kind: EventKind
    run_id: int | None = None
    step: int | None = None
    total: int | None = None
    values: dict[str, float] = field(default_factory=dict)
    message: str = ""
    stage: str | None = None
    ts: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if self.kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {self.kind!r}; expected one of {EVENT_KINDS}")


EventSink = Callable[[Event], None]


@dataclass
class RunSpec:
    """What an optimizer is asked to do, as plain values (it crosses processes as JSON).

    ``data`` are training rows in the method's shape (dicts with ``messages``
    and ``chosen``/``rejected``, ``completion``, or ``completion``/``label``);
    ``config`` holds the hyperparameters (validated by the method's options
    before any model loads); ``eval_data`` held-out rows.
    """

    method: str
    policy: ModelSpec
    data: list[dict[str, Any]]
    out_dir: str
    config: dict[str, Any] = field(default_factory=dict)
    run_id: int | None = None
    eval_data: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunSpec":
        return cls(**{**d, "policy": ModelSpec(**d["policy"])})


@dataclass
class RunResult:
    adapter_dir: str
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: list[tuple[str, str]] = field(default_factory=list)  # (kind, path)
