"""The hook points of plumb.

Three hooks do the work — critique, judge, reward — and three registration
hooks hand plumb what a plugin offers: backend objects (generation,
``core/backend.py``), method objects (training, ``core/method.py``) and
verifiers. The core dispatches a model spec to the backend registered under
its name and a run to the method registered under its name; ``plumb plugins``
lists them all before anything is called.

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
        Completion,
        Critique,
        CritiqueRequest,
        Judgment,
        JudgeRequest,
        ModelSpec,
        Reward,
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
    """Hand plumb the generation backends this plugin implements.

    Call ``register(backend)`` once per backend, with an instance of a
    ``plumb.core.backend.Backend`` subclass; ``backend.name`` is the prefix of
    a model spec (``NAME:TARGET``), and every spec with that prefix is
    generated (and option-scored, streamed) by that object.
    """


@hookspec
def plumb_register_methods(register: Callable[..., None]) -> None:
    """Hand plumb the optimization methods this plugin implements.

    Call ``register(method)`` once per method, with an instance of a
    ``plumb.core.method.Method`` subclass: its ``name`` (``plumb train NAME``),
    its options model (unknown keys, wrong types and out-of-range values are
    refused before any model loads), the shape of the rows it trains on, and
    ``train(run, ctx)``.
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


# -- the hooks that do the work ----------------------------------------------------
#
# Hooks that need other plugins take ``ctx`` (plumb.core.context.HookContext):
# generate through any backend, score through the reward hook, emit events,
# and ask whether the user cancelled. A plugin never imports another plugin.
# plumb calls each implementation itself (to know which plugin answered), so
# no hook takes a wrapper (hookwrapper / wrapper=True): a plugin that declares
# one is refused when it loads.


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
