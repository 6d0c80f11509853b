"""The hook points of plumb.

Five hooks do the work — generate, critique, judge, reward, optimize — and a
few registration hooks let a plugin *list* what it offers (backends, training
methods, verifiers) so ``plumb plugins`` can show what is installed before
anything is called.

A plugin is any module or object with functions named after these hooks and
marked with ``@hookimpl``::

    from plumb import hookimpl

    def shouts(task, completion):
        return Reward("shouts", float(completion.text.isupper()))

    @hookimpl
    def plumb_register_verifiers(register):
        register("shouts", "1 if the answer is in capitals", score=shouts)

Importing this module is cheap: records are only imported for type checking.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:
    from plumb.core.constitution import Constitution
    from plumb.core.context import HookContext
    from plumb.core.records import (
        Chat,
        Completion,
        Critique,
        CritiqueRequest,
        Judgment,
        JudgeRequest,
        ModelSpec,
        Reward,
        RunResult,
        RunSpec,
        SamplingParams,
        Task,
    )

PROJECT = "plumb"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# -- registration: what is installed -----------------------------------------
#
# Each registration hook gets a ``register`` callback. What a plugin registers
# is usable by name everywhere (a backend as ``NAME:TARGET``, a method as
# ``plumb train NAME``, a verifier in a constitution's ``checks``) and listed by
# ``plumb plugins``. A name registered twice is an error naming both plugins.


@hookspec
def plumb_register_backends(register: Callable[..., None]) -> None:
    """Declare the generation backends this plugin implements.

    Call ``register(name, description)`` once per backend; ``name`` is the
    prefix of a model spec (``NAME:TARGET``). The plugin's ``plumb_generate``
    (and, if it can, ``plumb_option_logprobs``) answers for that backend.
    """


@hookspec
def plumb_register_methods(register: Callable[..., None]) -> None:
    """Declare the optimization methods this plugin implements.

    Call ``register(name, description, options=Model)`` once per method;
    ``options`` is a pydantic model of the method's settings (unknown keys,
    wrong types and out-of-range values are refused before any model loads).
    The plugin's ``plumb_optimize`` trains it.
    """


@hookspec
def plumb_register_verifiers(register: Callable[..., None]) -> None:
    """Declare the verifiers (reward functions) this plugin implements.

    Call ``register(name, description, score=fn)`` with a per-item function
    ``fn(task, completion) -> Reward | float | None`` (plumb batches and
    guards it), or ``register(name, description)`` when the plugin's own
    batched ``plumb_reward`` answers for ``name``. Constitutions name
    verifiers in ``[[principles.checks]]``.
    """


# -- the five hook points ------------------------------------------------------
#
# Hooks that need other hooks take ``ctx`` (plumb.core.context.HookContext):
# generate through any backend, score through the reward hook, emit events,
# and ask whether the user cancelled. A plugin never imports another plugin.


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
def plumb_option_logprobs(
    model: "ModelSpec", chats: "list[Chat]", options: "list[str]"
) -> "list[dict[str, float]] | None":
    """The log-probability of each candidate continuation, without sampling.

    :param options: candidate texts the assistant's answer could start with
        (a judge's ``"A"``, ``"B"``, ``"tie"``).
    :return: per chat, ``{option: log p(option | chat)}``; ``None`` when the
        backend cannot score continuations (Anthropic; an OpenAI-compatible
        server that returns no log-probs), so the caller falls back to parsing
        sampled text.

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def plumb_critique(
    ctx: "HookContext",
    constitution: "Constitution",
    requests: "list[CritiqueRequest]",
    critic: "ModelSpec",
) -> "list[list[Critique]] | None":
    """Critique drafts against principles and revise them (Constitutional AI).

    :param requests: the drafts, each with its principle (or None: pick) and
        number of rounds; round k works on round k-1's revision.
    :return: per request, one Critique per round, in order; ``None`` to let
        another plugin answer.

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def plumb_judge(
    ctx: "HookContext",
    constitution: "Constitution",
    requests: "list[JudgeRequest]",
    judge: "ModelSpec",
) -> "list[Judgment] | None":
    """Say which of two answers better follows the constitution, for a batch of pairs.

    Implementations judge each pair in both orders (position swap) and report
    each order's verdict and p(A) in the Judgment; answers are data to judge,
    never instructions.

    Stops at the first non-None result.
    """


@hookspec
def plumb_reward(tasks: "list[Task]", completions: "list[Completion]") -> "list[Reward | None] | None":
    """Score a batch of completions, one per task (two equal-length lists).

    Every plugin contributes: return one ``Reward | None`` per completion
    (``None``: this verifier does not apply to that task), or ``None`` when
    the plugin has nothing to say about the whole batch. A verifier must never
    raise for a bad completion: score it 0 and say why in ``Reward.detail``.
    For one task at a time, register a per-item ``score`` function instead
    (``plumb_register_verifiers``).
    """


@hookspec(firstresult=True)
def plumb_optimize(ctx: "HookContext", method: str, run: "RunSpec") -> "RunResult | None":
    """Train the policy named in ``run`` with ``method``.

    :param method: the method name (``dpo``, ``sft``, ...); return ``None``
        when it is not yours.
    :param run: the serializable run spec: data, validated options, output
        directory.
    :param ctx: emits events (progress, metrics, logs) and says whether the
        user cancelled.
    :return: where the adapter was written, the final metrics, artifacts.

    Stops at the first non-None result.
    """
