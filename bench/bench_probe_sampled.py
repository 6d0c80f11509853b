"""Is the alignment tax real, or greedy decoding's noise? The report's free-form probe under sampling.

    python bench/bench_probe_sampled.py RUN_DIR [RUN_DIR ...] --k 8 --temperature 0.7 --scales 0.1 1

RUN_DIR is a finished `plumb tune --out` directory (bench/bench_tune.py leaves one per run). The free-form
probe (the plain questions; pipeline.probe.free_form) asks each question once, greedily, and counts a fact lost when the tuned model's one answer misses it;
on the 135M starter a fact the base barely knows flips under any small change of the weights
(bench/bench_probe_scales.py). Here base and tuned (the shipped adapter, at each ``--scales``) answer each of
the 48 probe questions ``k`` times at ``temperature``, and each question's share of right answers is its
probability of being answered right (Gekhman et al. 2024's P(correct)). Printed per run and scale:

* ``greedy-known``: over the questions the base answers right greedily (the report's set), the tuned
  model's summed P(correct) over the base's, with a 95% bootstrap interval over the questions;
* ``all``: the same ratio over all 48 questions;
* ``in the first sentence``: the same over all 48, counting an answer right only when its first sentence
  says the fact (a style that shortens answers is not charged for the facts a long answer mentions on the
  way; the choice's rule counts the same way).

A ratio near 1 at scale 1 with the same lost facts already at scale 0.1 says the greedy probe counts noise;
a ratio well under 1 is a real tax.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from plumb.core.records import Chat, ModelSpec, SamplingParams
from plumb.pipeline.compare import CompareOptions, compare
from plumb.pipeline.probe import FREE_FORM, _questions, first_sentence, right
from plumb.pipeline.stats import ratio
from plumb.pipeline.session import open_session


def ratio_ci(base: list[float], tuned: list[float]) -> tuple[float, float, float]:
    """sum(tuned) / sum(base) with its 95% bootstrap interval over the questions (``stats.ratio``)."""
    r = ratio(base, tuned)
    return r.value, r.lo, r.hi


def p_correct(session, spec: ModelSpec, prompts, accepted, params: SamplingParams) -> tuple[list[float], list[float]]:
    """Per question, the share of ``params.n`` answers that are right anywhere, and in their first sentence."""
    chats = [Chat.from_dicts(json.loads(p["messages"])) for p in prompts]
    batches, _, _ = session.pm.generate(spec, chats, params)
    anywhere = [sum(right(c.text, accepted[p["id"]]) for c in b) / len(b) for p, b in zip(prompts, batches)]
    first = [sum(right(first_sentence(c.text), accepted[p["id"]]) for c in b) / len(b) for p, b in zip(prompts, batches)]
    return anywhere, first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--scales", nargs="+", type=float, default=[1.0])
    args = ap.parse_args()
    params = SamplingParams(n=args.k, temperature=args.temperature, top_p=1.0, max_tokens=48, seed=0)
    out = []
    for run in args.runs:
        report = json.loads((Path(run) / "report.json").read_text())
        with open_session(run) as session:
            accepted = _questions(session, "probe")
            prompts = session.store.prompts("probe")
            greedy = compare(session, CompareOptions(report["base_gguf"], report["base_gguf"], split="probe",
                                                     params=FREE_FORM, sides=("base",)))  # the report's, stored
            said = {row.prompt_id: row.base for row in greedy.rows}
            known = [i for i, p in enumerate(prompts) if right(said.get(p["id"], ""), accepted[p["id"]])]
            base, base_first = p_correct(session, ModelSpec("llamacpp", report["base_gguf"]), prompts, accepted, params)
            for scale in args.scales:
                spec = ModelSpec("llamacpp", report["base_gguf"], lora=report["adapter_gguf"], lora_scale=scale)
                tuned, tuned_first = p_correct(session, spec, prompts, accepted, params)
                row = {"run": Path(run).name, "scale": scale, "k": args.k, "temperature": args.temperature,
                       "greedy_kept": report["probe"].get("free_form", {}).get("kept") or report["probe"]["kept"],
                       "greedy_known": ratio_ci([base[i] for i in known], [tuned[i] for i in known]),
                       "all": ratio_ci(base, tuned), "known_n": len(known),
                       "first_sentence_all": ratio_ci(base_first, tuned_first),
                       "p_base_known": sum(base[i] for i in known) / max(len(known), 1),
                       "p_tuned_known": sum(tuned[i] for i in known) / max(len(known), 1)}
                out.append(row)
                g, a, f = row["greedy_known"], row["all"], row["first_sentence_all"]
                print(f"{row['run']:45s} x{scale:<4g} greedy kept {row['greedy_kept']['k']}/{row['greedy_kept']['n']}"
                      f"  sampled P(correct) on those {len(known)}: base {row['p_base_known']:.2f} tuned "
                      f"{row['p_tuned_known']:.2f}, ratio {g[0]:.2f} [{g[1]:.2f}, {g[2]:.2f}]  all {len(prompts)}: ratio "
                      f"{a[0]:.2f} [{a[1]:.2f}, {a[2]:.2f}]  in the first sentence, all {len(prompts)}: base "
                      f"{sum(base_first) / len(prompts):.2f} tuned {sum(tuned_first) / len(prompts):.2f}, ratio "
                      f"{f[0]:.2f} [{f[1]:.2f}, {f[2]:.2f}]", flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
