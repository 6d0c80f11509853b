"""Wall time of `plumb --help` and `plumb plugins` (target: --help under 0.3 s).

Compares against a bare `python -c pass` and against importing torch, the
cost plumb avoids by importing heavy libraries lazily.

    .venv/bin/python bench/bench_startup.py [--runs 10]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def wall(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    plumb = shutil.which("plumb") or str(Path(sys.executable).parent / "plumb")
    rows = [
        ("python -c pass", [sys.executable, "-c", "pass"]),
        ("plumb --help", [plumb, "--help"]),
        ("plumb plugins", [plumb, "plugins"]),
        ("python -c 'import torch'", [sys.executable, "-c", "import torch"]),
    ]
    results = {name: wall(cmd, args.runs) for name, cmd in rows}
    for name, t in results.items():
        print(f"{name:<28} {t * 1000:8.1f} ms (median of {args.runs})")
    print(f"plumb --help / import torch: {results['plumb --help'] / results[rows[-1][0]]:.2f}x")
    verdict = "PASS" if results["plumb --help"] < 0.3 else "FAIL"
    print(f"target plumb --help < 300 ms: {verdict}")


if __name__ == "__main__":
    main()
