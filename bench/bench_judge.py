"""The AI judge on the starter: how good it is, and how fast, with and without prefix reuse.

    python bench/bench_judge.py                 # 40 bundled pairs, concise-writer, the starter GGUF
    python bench/bench_judge.py --pairs 80 --judge llamacpp:bigger.gguf

The pairs are the bundled concise-vs-padded preference pairs, whose answer is
known (the concise one follows concise-writer). plumb's judge plugin judges
each pair in both orders with the constitution as a shared system prompt; half
the pairs put the concise answer in position a, half in position b. Printed:

* accuracy of the debiased verdicts against the known answer, how many pairs
  were order-consistent, mean p(first answer better) in each order (the
  position bias), and how often the judge agrees with the constitution's checks;
* pairs/s with the KV cache of the shared constitution prefix reused (the
  default) and with it dropped before every prompt, and the ratio.

Not a test: numbers move with the machine's load.
"""

from __future__ import annotations

import argparse
import json
import time
from importlib.resources import files

from plumb.core.records import Chat, JudgeRequest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=40)
    p.add_argument("--judge", default="starter")
    p.add_argument("--constitution", default="concise-writer")
    a = p.parse_args()

    from plumb.core.constitution import load_constitution, resolve
    from plumb.core.context import HookContext
    from plumb.core.plugins import get_plugin_manager
    from plumb.models.specs import parse_spec
    from plumb.plugins import judge as judge_plugin
    from plumb import llamacpp

    rows = [json.loads(line) for line in (files("plumb.data") / "concise_pairs.jsonl").read_text().splitlines()]
    rows = rows[:a.pairs]
    requests, truth = [], []
    for i, r in enumerate(rows):
        chat = Chat.from_user(r["prompt"])
        concise_first = i % 2 == 0
        requests.append(JudgeRequest(chat, *((r["chosen"], r["rejected"]) if concise_first else
                                             (r["rejected"], r["chosen"]))))
        truth.append("a" if concise_first else "b")
    const = load_constitution(resolve(a.constitution))
    pm = get_plugin_manager(entry_points=False)
    ctx = HookContext(pm)
    spec = parse_spec(a.judge)

    judge_plugin.plumb_judge(ctx, const, requests[:2], spec)  # load the model outside the timing
    times = {}
    for mode in ("reuse", "no reuse", "reuse "):
        real = llamacpp.prefill
        if mode == "no reuse":
            def cold(llm, tokens):
                llm.n_tokens = 0  # drop the cache: every prompt is evaluated from its first token
                return real(llm, tokens)

            llamacpp.prefill = cold
        start = time.perf_counter()
        judgments = judge_plugin.plumb_judge(ctx, const, requests, spec)
        times[mode.strip()] = min(times.get(mode.strip(), 1e9), time.perf_counter() - start)
        llamacpp.prefill = real
    n = len(requests)
    decided = [(j, t) for j, t in zip(judgments, truth) if j.winner != "tie"]
    consistent = sum(j.consistent is True for j in judgments)
    right = sum(j.winner == t for j, t in zip(judgments, truth))
    p_ab = sum(j.p_a_ab for j in judgments) / n
    p_ba_first = sum(1 - j.p_a_ba for j in judgments) / n  # p(first better) in the swapped order
    print(f"judge {spec} on {n} pairs of {a.constitution} (known answer: the concise one)")
    print(f"  debiased verdicts right {right}/{n} ({right / n:.0%}); order-consistent {consistent}/{n}; "
          f"decided {len(decided)}/{n}")
    print(f"  mean p(first answer better): {p_ab:.2f} with a first, {p_ba_first:.2f} with b first "
          "(a judge without position bias: both near the share of pairs where the first is better)")
    print(f"  pairs/s with prefix reuse {n / times['reuse']:.2f}, without {n / times['no reuse']:.2f}: "
          f"{times['no reuse'] / times['reuse']:.2f}x")


if __name__ == "__main__":
    main()
