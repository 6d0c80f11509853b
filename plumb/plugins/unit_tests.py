"""The ``unit-tests`` verifier: a completion's code against the task's Python tests, sandboxed.

For a task with ``tests`` (pytest-style ``test_*`` functions importing from
``solution``, or a script of asserts), the completion's code runs in
``plumb.verify.sandbox`` beside the tests (``plumb.verify.unit_tests``); the reward is
the fraction of tests passed (``meta.all_or_nothing``: 1 or 0). A completion
that does not import, crashes or breaks a limit scores 0 with the reason; a
task whose tests are broken is reported as an ``error`` naming the task's
fault; a run past its time is a ``timeout``. When the sandbox cannot be set up
here, no code runs: the reward is an ``error`` that says which protection is
missing. ``meta.cpu_seconds`` / ``meta.wall_seconds`` / ``meta.memory_mb``
override the sandbox's limits for a task.
"""

from __future__ import annotations

from plumb.core.hookspecs import hookimpl
from plumb.core.records import Completion, Reward, Task

NAME = "unit-tests"
LIMIT_KEYS = ("cpu_seconds", "wall_seconds", "memory_mb")


def score(task: Task, completion: Completion) -> Reward | None:
    if not task.tests or task.check is not None:
        return None
    from plumb.verify import sandbox
    from plumb.verify.unit_tests import run_tests

    overrides = {k: task.meta[k] for k in LIMIT_KEYS if k in task.meta}
    try:
        limits = sandbox.Limits(**overrides)
        out = run_tests(completion.text, task.tests, limits, bool(task.meta.get("all_or_nothing")))
    except sandbox.SandboxUnavailable as exc:
        return Reward(NAME, 0.0, f"refused to run the code: {exc}", status="error")
    except TypeError as exc:
        return Reward(NAME, 0.0, f"bad sandbox limits in the task's meta: {exc}", status="error")
    detail = f"{out.passed}/{out.total} tests passed" if out.status == "ok" else out.reason
    if out.detail:
        detail += f"\n{out.detail}"
    if out.status == "task-error":
        return Reward(NAME, 0.0, f"task error (the tests, not the completion): {detail}", status="error",
                      seconds=out.seconds)
    status = "timeout" if out.status == "timeout" else "ok"
    return Reward(NAME, out.reward, detail, status=status, seconds=out.seconds)


@hookimpl
def plumb_register_verifiers(register) -> None:
    register(NAME, "fraction of the task's Python tests the completion's code passes, run in the sandbox",
             score=score)
