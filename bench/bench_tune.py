"""`plumb tune` variants at the same wall-clock budget: which way of learning moves the model most.

    python bench/bench_tune.py                                  # every variant, 4 constitutions, seeds 0 1, 10 min
    python bench/bench_tune.py --variants dpo sft --constitutions plain-speaker --seeds 0 --budget 10
    python bench/bench_tune.py --variants sft-rounds --constitutions bench/unseen/field-notes.toml \
        --prompts bench/unseen/prompts.jsonl                    # a constitution and prompts tuning never saw

Each run is ``plumb tune --out DIR --constitution C --method M [--rounds R] --seed S --budget-minutes B``
in its own process group, one after the other (two cores: running them together would halve each
one's budget). While it runs, the resident memory of the whole process tree (the CLI, the training
child, anything they start) is sampled every 0.2 s: the peak of that sum is the run's peak memory.
From each run's report.json it prints, per variant and constitution: the held-out pooled pass rate
of the checks base -> tuned with 95% intervals, the difference with its paired interval, each
principle's rates, mean words, distinct-2 (also length-matched), the share of degenerate answers, the alignment-tax
probe, the seconds per stage, wall time and peak memory. Everything goes to --out/results.json.

Variants (``--variants``); the candidates of sft and dpo are each sampled answer and its cuts after
each sentence, unless the name ends in ``-whole``:
    dpo              each prompt's best vs worst candidate by the graded checks (the largest gap), DPO + RPO
    sft              best-of-k rejection sampling, SFT on each prompt's best candidate
    grpo             GRPO with the checks as rewards (llama.cpp rollouts)
    dpo-rounds       dpo, up to 3 on-policy rounds (sample with the adapter so far, rank, train on)
    sft-rounds       sft, up to 3 on-policy rounds (plumb tune's default: the words anchored to the base by KL)
    sft-rounds-free  sft-rounds without the KL anchor (--anchor 0)
    sft-rounds-strong sft-rounds with a stronger KL anchor (--anchor 1; the default is 0.3)
    sft-rounds-whole sft-rounds on the sampled answers only (no cuts)
    dpo-rounds-whole dpo-rounds on the sampled answers only
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

VARIANTS = {
    "dpo": ["--method", "dpo"],
    "sft": ["--method", "sft"],
    "grpo": ["--method", "grpo"],
    "dpo-rounds": ["--method", "dpo", "--rounds", "3"],
    "sft-rounds": ["--method", "sft", "--rounds", "3"],
    "sft-rounds-free": ["--method", "sft", "--rounds", "3", "--anchor", "0"],
    "sft-rounds-strong": ["--method", "sft", "--rounds", "3", "--anchor", "1"],
    "sft-rounds-whole": ["--method", "sft", "--rounds", "3", "--no-prefixes"],
    "dpo-rounds-whole": ["--method", "dpo", "--rounds", "3", "--no-prefixes"],
}
CONSTITUTIONS = ["concise-writer", "plain-speaker", "personal-voice", "patient-tutor"]


def tree_rss_mb(root: int) -> float:
    """Resident memory (MB) of ``root`` and every process below it."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            ppid, pages = int(parts[1]), int(parts[21])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
        rss[int(d)] = pages
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += children.get(pid, [])
    return total * os.sysconf("SC_PAGE_SIZE") / 1e6


def run_one(plumb: str, out: Path, constitution: str, variant: str, seed: int, budget: float,
            prompts: str | None = None) -> dict:
    cmd = [plumb, "tune", "--out", str(out), "--constitution", constitution, "--seed", str(seed),
           "--budget-minutes", str(budget), *VARIANTS[variant]]
    out.parent.mkdir(parents=True, exist_ok=True)
    if prompts and not out.exists():  # the workspace's own prompts: tune splits off eval and dev itself
        subprocess.run([plumb, "init", str(out), "--constitution", constitution], check=True, capture_output=True)
        subprocess.run([plumb, "-w", str(out), "data", "import", prompts], check=True, capture_output=True)
    log = open(out.with_suffix(".log"), "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    peak = [0.0]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss_mb(proc.pid))
            done.wait(0.2)

    threading.Thread(target=watch, daemon=True).start()
    try:
        rc = proc.wait()
    except KeyboardInterrupt:
        os.killpg(proc.pid, signal.SIGTERM)
        raise
    finally:
        done.set()
    wall = time.perf_counter() - t0
    row = {"variant": variant, "constitution": constitution, "seed": seed, "rc": rc, "wall_s": round(wall, 1),
           "peak_mb": round(peak[0])}
    report = out / "report.json"
    if rc == 0 and report.is_file():
        row["report"] = json.loads(report.read_text())
    else:
        row["error"] = out.with_suffix(".log").read_text()[-800:]
    return row


def _rate(r: dict) -> str:
    return f"{r['rate']:.0%} [{r['lo']:.0%},{r['hi']:.0%}]" if r.get("n") else "n/a"


def show(row: dict) -> str:
    head = f"{row['variant']:<11} {Path(row['constitution']).stem:<15} s{row['seed']}"
    if "report" not in row:
        return f"{head}  FAILED rc {row['rc']}: {row.get('error', '')[-300:]!r}"
    rep = row["report"]
    ev = rep["eval"]
    b, t, d = ev["base"], ev["tuned"], ev.get("difference") or {}
    probe, free, often = rep["probe"]["kept"], rep["probe"].get("free_form") or {}, rep["probe"].get("often")
    m = ev.get("distinct2_matched") or {}
    lines = [f"{head}  checks {_rate(b['checks']['all'])} -> {_rate(t['checks']['all'])}  "
             f"diff {d.get('diff', 0):+.0%} [{d.get('lo', 0):+.0%},{d.get('hi', 0):+.0%}]  "
             f"words {b['mean_words']} -> {t['mean_words']}  distinct-2 {b['distinct2']:.2f} -> {t['distinct2']:.2f}"
             + (f" (length-matched {m['base']:.2f} -> {m['tuned']:.2f})" if m else "")
             + f"  degenerate {b['degenerate']:.0%} -> {t['degenerate']:.0%}"
             + (f"  facts as often {often['ratio']:.2f} [{often['lo']:.2f},{often['hi']:.2f}]" if often else "")
             + f"  greedy kept {probe['k']}/{probe['n']}"
             + (f"  free-form kept {free['kept']['k']}/{free['kept']['n']} (said first {free['said_first']['k']}/"
                f"{free['said_first']['n']})" if free else "")
             + f"  wall {row['wall_s']:.0f}s  peak {row['peak_mb']} MB"]
    lines.append("    per principle: " + "; ".join(
        f"{k} {b['checks'][k]['rate']:.0%}->{t['checks'][k]['rate']:.0%}" for k in b["checks"] if k != "all"))
    lines.append("    seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in rep["timings_s"].items())
                 + f"; learning share {rep['learning']['learning_share']:.0%}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--constitutions", nargs="+", default=CONSTITUTIONS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--budget", type=float, default=10.0, help="minutes per run")
    ap.add_argument("--out", default="bench/out-tune")
    ap.add_argument("--prompts", help="a JSONL of the person's own prompts instead of the bundled ones")
    ap.add_argument("--plumb", default=str(Path(sys.executable).with_name("plumb")))
    args = ap.parse_args()
    out = Path(args.out)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else []
    done = {(r["variant"], r["constitution"], r["seed"], r.get("budget")) for r in results if "report" in r}
    for constitution in args.constitutions:
        for seed in args.seeds:
            for variant in args.variants:
                if (variant, constitution, seed, args.budget) in done:
                    continue
                name = f"{variant}-{Path(constitution).stem}-s{seed}-b{args.budget:g}"
                row = run_one(args.plumb, out / name, constitution, variant, seed, args.budget, args.prompts)
                row["budget"] = args.budget
                results.append(row)
                out.mkdir(parents=True, exist_ok=True)
                results_path.write_text(json.dumps(results, indent=1))
                print(show(row), flush=True)


if __name__ == "__main__":
    main()
