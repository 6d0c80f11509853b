"""The tune report: DIR/report.json (every number a measurement of the run), DIR/report.md
(readable in a terminal and on GitHub) and PNG charts (training curves; base vs tuned per
principle). matplotlib is imported here only, with the Agg backend."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from plumb.core.text import printable
from plumb.pipeline.session import Session

CURVES = (("loss", "loss"), ("rewards/accuracies", "reward accuracy"), ("rewards/margins", "reward margin"))


def write_report(session: Session, out: Path, const: Any, base_gguf: str, adapter_gguf: str, hf_base: str,
                 trained: Any, result: Any, learned: dict[str, Any], choice: dict[str, Any], source: str,
                 seconds: dict[str, float], tax: Any, backend: str = "llamacpp") -> dict[str, Any]:
    """``backend`` serves ``base_gguf`` (a GGUF, or servers' URLs) with ``adapter_gguf`` on it (a GGUF LoRA, or
    a peft directory that servers load): ``tuned_spec`` in the report names the two together."""
    from plumb.pipeline.stats import workspace_counts

    store = session.store
    counts = workspace_counts(store)
    curves = {key: store.metrics(trained.run_id, key) for key, _ in CURVES}
    tps = store.metrics(trained.run_id, "tokens_per_s")
    report = {
        "base_gguf": base_gguf, "adapter_gguf": adapter_gguf, "hf_base": hf_base,
        "tuned_spec": f"{backend}:{base_gguf}+lora:{adapter_gguf}",
        "constitution": {"name": const.name, "hash": const.hash}, "prompts_from": source, "counts": counts,
        "learning": learned, "critic": critic_stats(store),
        "train": {"run_id": trained.run_id, "steps": curves["loss"][-1][0] if curves["loss"] else 0,
                  "final_loss": curves["loss"][-1][1] if curves["loss"] else None,
                  "reward_accuracy": curves["rewards/accuracies"][-1][1] if curves["rewards/accuracies"] else None,
                  "method": learned["method"],
                  "tokens_per_s": sum(v for _, v in tps) / len(tps) if tps else None,
                  "checkpoint": choice},
        "eval": result.to_dict() | {"win_rate": result.win, "n": result.n},
        "probe": tax.to_dict(),
        "timings_s": seconds, "total_s": round(sum(seconds.values()), 1),
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


def _often(often: dict[str, Any]) -> str:
    return f"{often['ratio']:.2f}x (95% CI {often['lo']:.2f}-{often['hi']:.2f}, {often['n']} facts)"


def _tax_lines(tax: dict[str, Any]) -> list[str]:
    if not tax["n"]:
        return []
    lines = [f"Alignment-tax probe ({tax['format']}): {tax['n']} short questions with known answers, asked after "
             "worked question/answer turns so both sides answer in a word or a phrase; the base answers "
             f"{tax['base_right']} right greedily."]
    if tax["often"]:
        o = tax["often"]
        lines[0] += (f" On those, asked {tax['samples']} times each at temperature {tax['temperature']:g}, the tuned "
                     f"model answers right **{_often(o)}** as often as the base (P(correct) {o['tuned']:.2f} vs "
                     f"{o['base']:.2f}; {'meets' if tax['ok'] else 'below'} the {tax['threshold']:.0%} bar). One greedy "
                     f"answer each: the tuned model keeps {_pct(tax['kept'])}.")
    free = tax.get("free_form") or {}
    if free.get("kept", {}).get("n"):
        lines[0] += (f" Asked plainly (greedy, free-form), it still says {_pct(free['kept'])} of the facts the base "
                     f"says anywhere in its answer, and {_pct(free['said_first'])} of those the base says in its "
                     "first sentence (a shorter answer drops the facts a long one mentions on the way).")
    return lines + [""]


def _choice_line(choice: dict[str, Any]) -> str:
    facts = choice.get("dev_facts", {})
    each = "; ".join(f"{k}: checks {v:.0%}" + (f", facts answered {_often(facts[k])} as often as the base"
                                               if facts.get(k) else "") for k, v in choice["dev_checks"].items())
    scaled = (f" (its LoRA update scaled by {choice['scale']:g}, between the base and the checkpoint: every "
              "checkpoint lost facts)" if choice.get("scale", 1.0) != 1.0 else "")
    return (f"Checkpoint **{choice['chosen']}**{scaled}, {choice.get('why', 'the most dev checks passed')} (dev prompts "
            f"and dev probe; base checks {choice['dev_checks_base']:.0%}): {each}.")


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
              f"| distinct-2 | {ev['base']['distinct2']:.3f} | {ev['tuned']['distinct2']:.3f} |",
              *([f"| distinct-2, length-matched | {m['base']:.3f} | {m['tuned']:.3f} |"]
                if (m := ev.get("distinct2_matched")) else []),
              f"| degenerate answers | {ev['base']['degenerate']:.0%} | {ev['tuned']['degenerate']:.0%} |", ""]
    d = ev.get("difference")
    if d:
        lines += [f"Pooled checks, tuned - base: **{d['diff']:+.1%}** (95% interval {d['lo']:+.1%} to {d['hi']:+.1%}, "
                  f"paired bootstrap over {d['prompts']} prompts).", ""]
    lines += _tax_lines(report["probe"])
    win = report["eval"]["win_rate"]
    if win:
        lines += [f"Judge ({win['judge']}) prefers tuned over base: {win['rate']:.0%} (95% CI {win['lo']:.0%}-"
                  f"{win['hi']:.0%}; {win['wins']} wins, {win['losses']} losses, {win['ties']} ties or "
                  "inconsistent, each judged in both orders; a tie counts half).", ""]
    learned = report["learning"]
    lines += ["## How it learned", "", f"Method **{learned['method']}**: {learned['why']}.", ""]
    for i, r in enumerate(learned["rounds"], 1):
        lines.append(f"- round {i}: {r['answers']} answers to {r['prompts']} prompts from `{r['model']}` "
                     f"(mean checks score {r['mean_score']:.2f}, {r['pass_share']:.0%} pass every check) -> "
                     f"{r['rows']} training rows")
    for key in ("headroom", "rounds_stopped", "critic", "judge"):
        if key in learned:
            lines.append(f"- {key}: {learned[key]}")
    lines += [f"- share of the run spent learning: {learned['learning_share']:.0%}", "",
              "Prompts from the " + report["prompts_from"] + " set; workspace counts: "
              + ", ".join(f"{k} {v}" for k, v in report["counts"].items()) + ".", "",
              _critic_line(report["critic"]), "", "## Training", "",
              f"{tr['steps']} {tr['method']} steps, final loss "
              + (f"{tr['final_loss']:.4f}" if tr["final_loss"] is not None else "n/a")
              + (f", {tr['tokens_per_s']:.0f} tokens/s" if tr["tokens_per_s"] else "") + ".", "",
              _choice_line(tr["checkpoint"]), ""]
    lines += [f"![{c.stem}]({c.name})" for c in charts] + [""]
    lines += ["## Timings of this run (s; a stage a rerun found done takes ~0)", "",
              " | ".join(f"{k} {v}" for k, v in report["timings_s"].items()) + f" | total {report['total_s']}", "",
              "## Examples", ""]
    for ex in result.examples[:6]:
        # a person reads these (the TUI shows this file): control characters escaped; report.json keeps them
        lines += [f"**{printable(ex['prompt'])}**", "", f"- base: {printable(ex['base'].strip())}",
                  f"- tuned: {printable(ex['tuned'].strip())}", ""]
    return "\n".join(lines)
