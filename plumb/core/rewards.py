"""Scoring completions: every verifier, batched, guarded; and a constitution's checks.

Two kinds of verifier feed one list of rewards per completion:

* a per-item ``score(task, completion)`` handed over at registration
  (``register(name, description, score=fn)``): plumb calls it for each item,
  turns a float into a ``Reward`` and an exception into a ``Reward`` with
  status "error" (the rest of the batch goes on);
* a plugin's batched ``plumb_reward(tasks, completions)``, for verifiers that
  run in parallel or share state (a sandbox pool, a reward model).

A task that carries a constitution check (``task.check``) is scored only by the
verifier the check names. No model code here.
"""

from __future__ import annotations

import time
from typing import Any

from plumb.core.errors import PlumbError
from plumb.core.records import Chat, Completion, Reward, Task


def _as_reward(name: str, value: Any, seconds: float) -> Reward | None:
    if value is None:
        return None
    if isinstance(value, Reward):
        if not value.seconds:
            value.seconds = seconds
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return Reward(name, 0.0, f"verifier returned {type(value).__name__}, not a Reward or a number",
                      status="error", seconds=seconds)
    return Reward(name, float(value), seconds=seconds)


def score(pm: Any, tasks: list[Task], completions: list[Completion]) -> list[list[Reward]]:
    """Every applicable reward for each (task, completion): one list per completion."""
    if len(tasks) != len(completions):
        raise PlumbError(f"scoring needs one task per completion: got {len(tasks)} tasks and "
                         f"{len(completions)} completions.")
    out: list[list[Reward]] = [[] for _ in completions]
    for entry in pm.registry.verifiers.values():
        if entry.impl is None:
            continue
        for i, (task, completion) in enumerate(zip(tasks, completions)):
            if task.check is not None and task.check.get("verifier") != entry.name:
                continue
            start = time.perf_counter()
            try:
                value = entry.impl(task, completion)
            except Exception as exc:  # a verifier must not take the batch down
                value = Reward(entry.name, 0.0, f"verifier {entry.name} ({entry.plugin}) raised "
                               f"{type(exc).__name__}: {exc}", status="error")
            reward = _as_reward(entry.name, value, time.perf_counter() - start)
            if reward is not None:
                out[i].append(reward)
    for impl in pm.hook.plumb_reward.get_hookimpls():
        batch = impl.function(tasks=tasks, completions=completions)
        if batch is None:
            continue
        if len(batch) != len(completions):
            raise PlumbError(f"plugin {impl.plugin_name}'s plumb_reward returned {len(batch)} rewards for "
                             f"{len(completions)} completions; it must return one Reward or None per completion.")
        for i, reward in enumerate(batch):
            check = tasks[i].check
            if reward is not None and (check is None or reward.name == check.get("verifier")):
                out[i].append(reward)
    return out


# -- a constitution's checks --------------------------------------------------------------


def check_tasks(constitution: Any) -> list[tuple[str, Task]]:
    """One task per check of every principle: [(principle_id, task)]."""
    return [(p.id, Task(prompt=Chat(()), meta={"check": {"verifier": c.verifier, "params": dict(c.params)}}))
            for p in constitution.principles for c in p.checks]


def validate_checks(pm: Any, constitution: Any) -> None:
    """Refuse, before any work starts, a constitution whose checks name a verifier nobody provides."""
    registry = pm.registry
    for p in constitution.principles:
        for c in p.checks:
            try:
                registry.check_verifier(c.verifier)
            except PlumbError as exc:
                raise PlumbError(f"constitution {constitution.name!r}, principle {p.id!r}: {exc}",
                                 exit_code=2) from None


def check_completions(pm: Any, constitution: Any, completions: list[Completion]) -> list[list[tuple[str, Reward]]]:
    """Run every check of every principle on each completion: per completion, [(principle_id, reward)]."""
    validate_checks(pm, constitution)
    checks = check_tasks(constitution)
    if not checks or not completions:
        return [[] for _ in completions]
    tasks = [task for _ in completions for _, task in checks]
    flat = [c for c in completions for _ in checks]
    rewards = score(pm, tasks, flat)
    out = []
    for i in range(len(completions)):
        row = []
        for k, (pid, _) in enumerate(checks):
            row += [(pid, r) for r in rewards[i * len(checks) + k]]
        out.append(row)
    return out
