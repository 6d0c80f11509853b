"""How fragile the alignment-tax probe is: one tuned adapter's LoRA update at several scales, each on the
report's probe (the questions the base answers right: how many the tuned model still answers right), asked
closed-book (greedy count and sampled ratio) and free-form (greedy: kept anywhere, and of those said first).

    python bench/bench_probe_scales.py RUN_DIR [RUN_DIR ...] --scales 0.1 0.25 0.5 0.75 1

RUN_DIR is a finished `plumb tune --out` directory (bench/bench_tune.py leaves one per run). Its first round's
last checkpoint is exported to a GGUF LoRA if needed, then each scale answers the 48 probe questions greedily
on the base GGUF (llama.cpp's per-call LoRA scale, the compare stage). If facts flip at a scale so small
that the style barely moves, the probe counts noise as well as the tax: a fact the base barely knows flips
under any perturbation of the weights.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from plumb.pipeline.export import export_adapter
from plumb.pipeline.probe import free_form, probe
from plumb.pipeline.session import open_session


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--scales", nargs="+", type=float, default=[0.1, 0.25, 0.5, 0.75, 1.0])
    args = ap.parse_args()
    out = []
    for run in args.runs:
        report = json.loads((Path(run) / "report.json").read_text())
        with open_session(run) as session:
            first = sorted((Path(run) / "adapters").glob("*/checkpoints/step-*"))[0]  # round 1's checkpoint
            run_id = session.store.one("SELECT id FROM runs ORDER BY id LIMIT 1")[0]
            gguf = export_adapter(session, str(first / "adapter"), report["hf_base"].removeprefix("hf:"), run_id,
                                  str(first / "adapter.gguf"))
            for scale in args.scales:
                p = probe(session, report["base_gguf"], str(gguf), scale=scale)
                free = free_form(session, report["base_gguf"], str(gguf), scale=scale)
                row = {"run": Path(run).name, "checkpoint": str(first.relative_to(run)), "scale": scale,
                       "often": p.often.to_dict() if p.often else None, "kept": p.kept.to_dict(),
                       "free_form": {k: v.to_dict() for k, v in free.items()}, "lost": [x["question"] for x in p.lost]}
                out.append(row)
                print(f"{row['run']:45s} x{scale:<5g} closed-book: often {p.often}, greedy kept {p.kept.k}/{p.kept.n}"
                      f"  free-form: kept {free['kept'].k}/{free['kept'].n}, said first {free['said_first'].k}/"
                      f"{free['said_first'].n}  lost (closed-book, greedy): {'; '.join(row['lost'])}", flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
