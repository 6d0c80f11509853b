"""Sandboxed runs per second, and the sandbox's cost over a bare `python -c pass`.

Throughput: `--runs` trivial unit-test verifications (a two-line `add` against
two pytest-style tests) on a pool of `--workers` threads (default: every core),
each run its own sandbox; target at least 20 runs/s on 2 cores. Latency: the
median wall time of `python -c pass` bare and inside the sandbox, one at a time.
CPU time (user + sys of all the processes a run starts) says what a run costs
however busy the machine is: runs/s on N idle cores is about N / CPU time.

    .venv/bin/python bench/bench_sandbox.py [--runs 100] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from plumb.verify import sandbox
from plumb.verify.unit_tests import run_tests

SOLUTION = "def add(a, b):\n    return a + b\n"
TESTS = """
from solution import add


def test_add():
    assert add(2, 3) == 5


def test_zero():
    assert add(0, 0) == 0
"""


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def latency(fn, runs: int) -> tuple[float, float]:
    """Median wall seconds of ``fn()`` and mean CPU seconds of the processes it started."""
    times, cpu = [], children_cpu()
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), (children_cpu() - cpu) / runs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    args = ap.parse_args()
    print("protections:", ", ".join(f"{k}={v}" for k, v in sandbox.protections().items()))

    bare = [sys.executable, "-c", "pass"]
    rows = {
        "bare python -c pass": latency(lambda: subprocess.run(bare, check=True), 20),
        "sandboxed python -c pass": latency(lambda: sandbox.run(bare), 20),
        "one unit-test verification": latency(lambda: run_tests(SOLUTION, TESTS), 20),
    }
    for name, (wall, cpu) in rows.items():
        print(f"{name:<28} {wall * 1000:7.1f} ms wall (median of 20) {cpu * 1000:7.1f} ms CPU")
    (bare_wall, bare_cpu), (boxed_wall, boxed_cpu) = rows["bare python -c pass"], rows["sandboxed python -c pass"]
    print(f"sandbox overhead over bare python -c pass: {boxed_wall / bare_wall:.2f}x wall "
          f"(+{(boxed_wall - bare_wall) * 1000:.1f} ms; +{(boxed_cpu - bare_cpu) * 1000:.1f} ms CPU)")

    cpu, start = children_cpu(), time.perf_counter()
    with ThreadPoolExecutor(args.workers) as pool:
        rewards = list(pool.map(lambda _: run_tests(SOLUTION, TESTS).reward, range(args.runs)))
    seconds = time.perf_counter() - start
    assert rewards == [1.0] * args.runs, "an honest solution did not score 1"
    rate = args.runs / seconds
    print(f"{args.runs} verifications on {args.workers} workers: {seconds:.2f} s, {rate:.1f} runs/s "
          f"({(children_cpu() - cpu) / args.runs * 1000:.1f} ms CPU each)")
    print(f"target >= 20 runs/s: {'PASS' if rate >= 20 else 'FAIL'}")


if __name__ == "__main__":
    main()
