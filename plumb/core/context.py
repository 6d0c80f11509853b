"""What a hook gets from the core to do its work without importing other plugins.

A critic needs to generate, a judge to score options, a trainer to report
progress and notice a cancel. ``HookContext`` hands them the plugin manager's
services: generation through any backend (by spec), a streamed reply, option
log-probabilities, a judge, rewards through every verifier, an event sink, and
the user's cancel flag.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from plumb.core.errors import PlumbError
from plumb.core.records import Chat, Completion, Event, EventSink, ModelSpec, Reward, SamplingParams, Task


class Cancelled(PlumbError):
    """The user asked the work to stop; what was finished is kept."""

    exit_code = 130


def _drop(event: Event) -> None:
    return None


def _parse(text: str, role: str) -> ModelSpec:
    from plumb.core.specs import parse_spec

    return parse_spec(text)


class HookContext:
    def __init__(self, pm: Any, sink: EventSink | None = None, cancel: threading.Event | None = None,
                 run_id: int | None = None, resolve: Callable[[str, str], ModelSpec] | None = None) -> None:
        self.pm = pm
        self.resolve = resolve or _parse  # spec text, role -> ModelSpec; a session's resolves the starter
        self.sink = sink or _drop
        self.cancel = cancel or threading.Event()
        self.run_id = run_id

    # -- services ---------------------------------------------------------------------

    def spec(self, model: ModelSpec | str, role: str = "generate") -> ModelSpec:
        spec = self.resolve(model, role) if isinstance(model, str) else model
        self.pm.registry.check_backend(spec.backend)
        return spec

    def generate(self, model: ModelSpec | str, chats: list[Chat], params: SamplingParams) -> list[list[Completion]]:
        """``params.n`` completions per chat from whichever backend answers for ``model``."""
        return self.pm.generate(self.spec(model), chats, params)[0]

    def stream(self, model: ModelSpec | str, chat: Chat, params: SamplingParams,
               on_text: Callable[[str], None]) -> Completion:
        """One reply to ``chat`` from ``model``'s backend, ``on_text(text so far)`` called as it grows (once, with
        the whole reply, where the backend cannot stream); an exception from ``on_text`` stops it."""
        spec = self.spec(model)
        return self.pm.backend(spec)[0].stream(spec, chat, params, on_text)

    def option_logprobs(self, model: ModelSpec | str, chats: list[Chat], options: list[str]) -> list[dict[str, float]] | None:
        """Per chat, ``{option: log p(option)}`` as the answer's start; None when the backend cannot say."""
        spec = self.spec(model)
        return self.pm.backend(spec)[0].option_logprobs(spec, chats, list(options))

    def judge(self, constitution: Any, requests: list, judge: ModelSpec | str) -> list | None:
        """The first installed judge's verdicts on ``requests`` (``plumb_judge``), one per request; None when
        no plugin judges with ``judge``."""
        judgments, _, _ = self.pm.first("plumb_judge", ctx=self, constitution=constitution, requests=requests,
                                        judge=self.spec(judge))
        return judgments

    def reward(self, tasks: list[Task], completions: list[Completion]) -> list[list[Reward]]:
        """Every applicable verifier's reward for each completion (plumb.core.rewards.score)."""
        from plumb.core.rewards import score

        return score(self.pm, tasks, completions)

    # -- reporting and cancelling -----------------------------------------------------------

    def emit(self, event: Event) -> None:
        if event.run_id is None and self.run_id is not None:
            event.run_id = self.run_id
        self.sink(event)

    def log(self, message: str) -> None:
        self.emit(Event("log", message=message))

    def progress(self, step: int, total: int | None, message: str = "") -> None:
        self.emit(Event("progress", step=step, total=total, message=message))

    def cancelled(self) -> bool:
        return self.cancel.is_set()

    def check_cancelled(self) -> None:
        if self.cancel.is_set():
            raise Cancelled("stopped on request; everything finished so far is kept.")
