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

import os
import time
import queue
import threading
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


def timeout_seconds() -> float:
    """How long one per-item verifier call may take: $PLUMB_VERIFIER_TIMEOUT, default 60 s."""
    return float(os.environ.get("PLUMB_VERIFIER_TIMEOUT", 60))


def _call(entry: Any, task: Task, completion: Completion) -> Reward | None:
    start = time.perf_counter()
    try:
        value = entry.impl(task, completion)
    except Exception as exc:  # a verifier must not take the batch down
        value = Reward(entry.name, 0.0, f"verifier {entry.name} ({entry.plugin}) raised "
                       f"{type(exc).__name__}: {exc}", status="error")
    return _as_reward(entry.name, value, time.perf_counter() - start)


def _run_guarded(jobs: list[tuple[int, Any]], tasks: list[Task],
                 completions: list[Completion]) -> list[Reward | None]:
    """Run per-item verifier calls on daemon threads, one per core. A call's own running time
    (not its wait in the queue) is limited; a call past the limit is abandoned — its thread
    is a daemon, so it cannot keep plumb from exiting — and scored as a timeout."""
    limit = timeout_seconds()
    pending: queue.Queue = queue.Queue()
    for k, job in enumerate(jobs):
        pending.put((k, job))
    results: list[Reward | None] = [None] * len(jobs)
    started: dict[int, float] = {}
    finished = {k: threading.Event() for k in range(len(jobs))}
    expired: set[int] = set()

    def worker() -> None:
        while True:
            try:
                k, (i, entry) = pending.get_nowait()
            except queue.Empty:
                return
            started[k] = time.monotonic()
            reward = _call(entry, tasks[i], completions[i])
            if k not in expired:  # a call already scored as a timeout keeps that score
                results[k] = reward
            finished[k].set()

    for _ in range(min(len(jobs), os.cpu_count() or 1)):
        threading.Thread(target=worker, daemon=True, name="plumb-verifier").start()
    for k, (_, entry) in enumerate(jobs):
        while not finished[k].wait(0.05):
            if k in started and time.monotonic() - started[k] >= limit:
                expired.add(k)
                results[k] = Reward(entry.name, 0.0, f"verifier {entry.name} ({entry.plugin}) did not finish in "
                                    f"{limit:g}s (PLUMB_VERIFIER_TIMEOUT)", status="timeout", seconds=limit)
                threading.Thread(target=worker, daemon=True, name="plumb-verifier").start()  # replace the stuck one
                break
    return results


def score(pm: Any, tasks: list[Task], completions: list[Completion]) -> list[list[Reward]]:
    """Every applicable reward for each (task, completion): one list per completion.

    Per-item verifiers run on one thread per core (sandboxed runs are child
    processes, so they go in parallel); a call that takes longer than
    ``timeout_seconds()`` scores 0 with status "timeout" and the batch goes on."""
    if len(tasks) != len(completions):
        raise PlumbError(f"scoring needs one task per completion: got {len(tasks)} tasks and "
                         f"{len(completions)} completions.")
    out: list[list[Reward]] = [[] for _ in completions]
    jobs = [(i, entry) for entry in pm.registry.verifiers.values() if entry.impl is not None
            for i, task in enumerate(tasks) if task.check is None or task.check.get("verifier") == entry.name]
    for (i, _), reward in zip(jobs, _run_guarded(jobs, tasks, completions)):
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


# -- weights ---------------------------------------------------------------------------------


def parse_weights(items: list[str] | dict[str, float]) -> dict[str, float]:
    """``["unit-tests=2", "length"]`` (or a dict from a run config) as {verifier: weight}."""
    if isinstance(items, dict):
        return {str(k): float(v) for k, v in items.items()}
    out = {}
    for item in items:
        name, sep, weight = item.partition("=")
        try:
            out[name.strip()] = float(weight) if sep else 1.0
        except ValueError:
            raise PlumbError(f"reward {item!r}: the weight must be a number (NAME or NAME=WEIGHT).",
                             exit_code=2) from None
    return out


def validate_weights(pm: Any, weights: dict[str, float]) -> None:
    """Refuse, before any work, a weight naming a verifier no plugin provides."""
    for name in weights:
        pm.registry.check_verifier(name)


def combine(rewards: list[Reward], weights: dict[str, float]) -> float:
    """The weighted sum of one completion's rewards over the weighted verifiers (a verifier
    that did not apply, or failed, adds 0)."""
    return sum(weights[r.name] * r.value for r in rewards if r.name in weights and r.status == "ok")
