"""The hook points of plumb.

Five hooks do the work — generate, critique, judge, reward, optimize — and a
few registration hooks let a plugin *list* what it offers (backends, training
methods, verifiers) so ``plumb plugins`` can show what is installed before
anything is called.

A plugin is any module or object with functions named after these hooks and
marked with ``@hookimpl``::

    from plumb import hookimpl

    @hookimpl
    def plumb_reward(task, completion):
        if task.answer is None:
            return None          # not applicable to this task
        return Reward("exact", float(completion.text.strip() == task.answer))

Importing this module is cheap: records are only imported for type checking.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:
    from plumb.core.constitution import Constitution, Principle
    from plumb.core.records import (
        Chat,
        Completion,
        Critique,
        Judgment,
        ModelSpec,
        Reward,
        Run,
        RunResult,
        SamplingParams,
        Task,
    )

PROJECT = "plumb"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# -- registration: what is installed -----------------------------------------


@hookspec
def plumb_register_backends(register: Callable[..., None]) -> None:
    """Declare the generation backends this plugin implements.

    Call ``register(name, description)`` once per backend; ``name`` is the
    prefix of a model spec (``llamacpp``, ``hf``, ``anthropic``, ``openai``).
    """


@hookspec
def plumb_register_methods(register: Callable[..., None]) -> None:
    """Declare the optimization methods this plugin implements.

    Call ``register(name, description)`` once per method (``dpo``, ``sft``, ...).
    """


@hookspec
def plumb_register_verifiers(register: Callable[..., None]) -> None:
    """Declare the verifiers (reward functions) this plugin implements.

    Call ``register(name, description)``; constitutions name verifiers in
    ``[[principles.checks]]``.
    """


# -- the five hook points ------------------------------------------------------


@hookspec(firstresult=True)
def plumb_generate(
    model: "ModelSpec", chats: "list[Chat]", params: "SamplingParams"
) -> "list[list[Completion]] | None":
    """Sample completions for each chat.

    :param model: the parsed model spec; a backend answers only when
        ``model.backend`` is its own and returns ``None`` otherwise.
    :param chats: the conversations to continue.
    :param params: sampling parameters; ``params.n`` completions per chat.
    :return: one list of ``params.n`` completions per chat, in order.

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def plumb_critique(
    constitution: "Constitution",
    principle: "Principle",
    chat: "Chat",
    completion: "Completion",
    critic: "ModelSpec",
) -> "Critique | None":
    """Critique ``completion`` against one principle and revise it.

    :return: a Critique holding the critique text and the revised answer, or
        ``None`` to let another plugin answer.

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def plumb_judge(
    constitution: "Constitution",
    chat: "Chat",
    a: "Completion",
    b: "Completion",
    judge: "ModelSpec",
) -> "Judgment | None":
    """Say which of two answers better follows the constitution.

    Implementations should debias position (ask with A/B swapped) and report
    ``p_a``, the probability that A is better, when they can.

    Stops at the first non-None result.
    """


@hookspec
def plumb_reward(task: "Task", completion: "Completion") -> "Reward | None":
    """Score a completion for a task.

    Every plugin contributes; return ``None`` when the task is not one this
    verifier applies to. The core combines rewards by configured weights. A
    verifier must never raise for a bad completion: score it 0 and say why in
    ``Reward.detail``.
    """


@hookspec(firstresult=True)
def plumb_optimize(method: str, run: "Run") -> "RunResult | None":
    """Train the policy named in ``run`` with ``method``.

    :param method: the method name (``dpo``, ``ipo``, ``kto``, ``orpo``,
        ``sft``, ...); return ``None`` when it is not yours.
    :param run: data, hyperparameters, output directory and an event sink.
    :return: where the adapter was written and the final metrics.

    Stops at the first non-None result.
    """
