"""The tune report: DIR/report.json (every number a measurement of the run), DIR/report.md
(readable in a terminal and on GitHub) and PNG charts (training curves; base vs tuned per
principle). matplotlib is imported here only, with the Agg backend."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from plumb.pipeline.session import Session

CURVES = (("loss", "loss"), ("rewards/accuracies", "reward accuracy"), ("rewards/margins", "reward margin"))


def write_report(session: Session, out: Path, const: Any, base_gguf: str, adapter_gguf: str, hf_base: str,
                 trained: Any, result: Any, pairs: dict[str, Any], choice: dict[str, Any], source: str,
                 seconds: dict[str, float]) -> dict[str, Any]:
    store = session.store
    counts = {k: store.one(f"SELECT count(*) FROM {t}")[0] for k, t in
              (("prompts", "prompts"), ("samples", "samples"), ("critiques", "critiques"), ("judgments", "judgments"))}
    counts["pairs"] = pairs["kept"]
    curves = {key: store.metrics(trained.run_id, key) for key, _ in CURVES}
    tps = store.metrics(trained.run_id, "tokens_per_s")
    report = {
        "base_gguf": base_gguf, "adapter_gguf": adapter_gguf, "hf_base": hf_base,
        "constitution": {"name": const.name, "hash": const.hash}, "prompts_from": source, "counts": counts,
        "pairs": pairs, "critic": critic_stats(store),
        "train": {"run_id": trained.run_id, "steps": curves["loss"][-1][0] if curves["loss"] else 0,
                  "final_loss": curves["loss"][-1][1] if curves["loss"] else None,
                  "reward_accuracy": curves["rewards/accuracies"][-1][1] if curves["rewards/accuracies"] else None,
                  "tokens_per_s": sum(v for _, v in tps) / len(tps) if tps else None,
                  "checkpoint": choice},
        "eval": result.to_dict() | {"win_rate": result.win, "n": result.n},
        "timings_s": seconds,
    }
    out.mkdir(parents=True, exist_ok=True)
    charts = _charts(out, curves, result)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "report.md").write_text(_markdown(report, const, result, charts))
    for path in [out / "report.json", out / "report.md", *charts]:  # recorded once: a rerun rewrites them
        if store.one("SELECT id FROM artifacts WHERE run_id = ? AND kind = 'report' AND path = ?",
                     (trained.run_id, str(path.resolve()))) is None:
            store.add_artifact("report", str(path.resolve()), trained.run_id)
    return report


def critic_stats(store: Any) -> dict[str, Any]:
    """How good the critic was on this run: revisions made, how many were flagged and why, and for the
    unflagged ones the checks' (and a model judge's) verdict of revision against the answer it revised."""
    rows = store.query("SELECT sample_id, revision_id, flags FROM critiques")
    flags: dict[str, int] = {}
    flagged = 0
    verdicts = {"checks": {"revision": 0, "draft": 0, "tie": 0}, "model": {"revision": 0, "draft": 0, "tie": 0}}
    for r in rows:
        found = json.loads(r["flags"] or "[]")
        for f in found:
            flags[f.split(":")[0]] = flags.get(f.split(":")[0], 0) + 1
        flagged += bool(found)
        if found or r["revision_id"] is None:
            continue
        for source, counts in verdicts.items():
            j = store.one("SELECT a_id, winner FROM judgments WHERE source = ? AND principle_id IS NULL AND "
                          "((a_id = ? AND b_id = ?) OR (a_id = ? AND b_id = ?)) ORDER BY id DESC LIMIT 1",
                          (source, r["sample_id"], r["revision_id"], r["revision_id"], r["sample_id"]))
            if j is not None:
                side = "a" if j["a_id"] == r["revision_id"] else "b"
                counts["tie" if j["winner"] == "tie" else "revision" if j["winner"] == side else "draft"] += 1
    return {"revisions": len(rows), "flagged": flagged, "flags": flags, "unflagged_judged": verdicts}


def _charts(out: Path, curves: dict[str, list[tuple[int, float]]], result: Any) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, axes = plt.subplots(1, len(CURVES), figsize=(4 * len(CURVES), 3))
    for ax, (key, title) in zip(axes, CURVES):
        points = curves[key]
        ax.plot([s for s, _ in points], [v for _, v in points], marker=".")
        ax.set_title(title)
        ax.set_xlabel("step")
    fig.tight_layout()
    paths.append(out / "training.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    keys = [k for k in result.base.checks if k != "all"]
    if keys:
        fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(keys)), 3.5))
        xs = range(len(keys))
        for offset, (side, data) in zip((-0.2, 0.2), (("base", result.base), ("tuned", result.tuned))):
            rates = [data.checks[k] for k in keys]
            ax.bar([x + offset for x in xs], [r.value for r in rates], width=0.4, label=side,
                   yerr=[[r.value - r.interval[0] for r in rates], [r.interval[1] - r.value for r in rates]],
                   capsize=3)
        ax.set_xticks(list(xs), keys, rotation=30, ha="right")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("checks passed")
        ax.legend()
        fig.tight_layout()
        paths.append(out / "principles.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


def _pct(rate: dict[str, Any] | None) -> str:
    if not rate or not rate.get("n"):
        return "n/a"
    return f"{rate['rate']:.0%} ({rate['k']}/{rate['n']}, {rate['lo']:.0%}-{rate['hi']:.0%})"


def _critic_line(c: dict[str, Any]) -> str:
    if not c["revisions"]:
        return "Critic: no revisions on this run."
    flags = ", ".join(f"{k} {v}" for k, v in sorted(c["flags"].items())) or "none"
    parts = [f"{who}: revision better {v['revision']}, draft better {v['draft']}, tie {v['tie']}"
             for who, v in c["unflagged_judged"].items() if sum(v.values())]
    return (f"Critic: {c['revisions']} revisions, {c['flagged']} flagged and never used ({flags}); of the unflagged "
            "ones, revision against the answer it revised - " + ("; ".join(parts) or "none judged") + ".")


def _markdown(report: dict[str, Any], const: Any, result: Any, charts: list[Path]) -> str:
    ev, tr = report["eval"], report["train"]
    lines = [f"# plumb tune: {const.name} ({const.hash})", "",
             f"Base `{report['base_gguf']}`, adapter `{report['adapter_gguf']}` (checkpoint "
             f"{tr['checkpoint']['chosen']}), trained on `{report['hf_base']}`.", "",
             "## Held-out evaluation", "",
             f"{ev['n']} held-out prompts, greedy answers from one loaded model (adapter scale 0 = base, 1 = tuned).",
             "", "| | base | tuned |", "| --- | --- | --- |"]
    for key in ev["base"]["checks"]:
        lines.append(f"| checks: {key} | {_pct(ev['base']['checks'][key])} | {_pct(ev['tuned']['checks'][key])} |")
    lines += [f"| mean words | {ev['base']['mean_words']} | {ev['tuned']['mean_words']} |",
              f"| distinct-2 | {ev['base']['distinct2']:.3f} | {ev['tuned']['distinct2']:.3f} |", ""]
    win = report["eval"]["win_rate"]
    if win:
        lines += [f"Judge ({win['judge']}) prefers tuned over base: {win['rate']:.0%} (95% CI {win['lo']:.0%}-"
                  f"{win['hi']:.0%}; {win['wins']} wins, {win['losses']} losses, {win['ties']} ties or "
                  "inconsistent, each judged in both orders; a tie counts half).", ""]
    p = report["pairs"]
    lines += ["## Data", "", f"Prompts from the {report['prompts_from']} set; counts: "
              + ", ".join(f"{k} {v}" for k, v in report["counts"].items()) + ".", "",
              f"Pairs by **{p['mode']}**: {p['why']}. Kept {p['kept']}; dropped "
              + (", ".join(f"{k} {v}" for k, v in p["dropped"].items()) or "none") + ".", "",
              _critic_line(report["critic"]), "",
              "## Training", "",
              f"{tr['steps']} DPO steps, final loss {tr['final_loss']:.4f}, reward accuracy "
              f"{tr['reward_accuracy']:.2f}, {tr['tokens_per_s']:.0f} tokens/s. Checkpoint chosen by the checks on "
              "the dev prompts: " + ", ".join(f"{k} {v:.0%}" for k, v in tr["checkpoint"]["dev_checks"].items())
              + f" (base {tr['checkpoint']['dev_checks_base']:.0%}).", ""]
    lines += [f"![{c.stem}]({c.name})" for c in charts] + [""]
    lines += ["## Timings of this run (s; a stage a rerun found done takes ~0)", "", " | ".join(f"{k} {v}" for k, v in report["timings_s"].items()), "",
              "## Examples", ""]
    for ex in result.examples[:6]:
        lines += [f"**{ex['prompt']}**", "", f"- base: {ex['base'].strip()}", f"- tuned: {ex['tuned'].strip()}", ""]
    return "\n".join(lines)
