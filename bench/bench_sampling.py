"""Sampling benchmark: k answers per prompt, one sequence at a time vs decoded together.

    python bench/bench_sampling.py                       # the pulled starter model (SmolLM2-135M Q4_1)
    python bench/bench_sampling.py --gguf M.gguf --k 4 --tokens 96 --rounds 2

The workload of the main job's sampling step: k = 4 answers for each of 8
everyday prompts, up to 96 new tokens each, temperature 0.8 (top-p 0.95),
seeded. Both paths go through ``plumb.llamacpp.generate`` on one
loaded model with $PLUMB_THREADS threads (default: every core this process
may use):

* one at a time (``batched=False``): each answer prefilled (prefix cache:
  only the last prompt token again) and decoded alone, token by token;
* batched (``batched=True``): the 32 answers decoded together in one
  llama.cpp batch, each prompt evaluated once and shared by its k sequences.

Tokens/s counts generated tokens over wall time, prefill included. The two
paths alternate for ``--rounds`` rounds (in ABBA order); the summary gives
each path's best round and the median of the per-round ratios.
Target: batched >= 2x one at a time. Not a test: numbers move with the
machine's load, and with the weights' type (``--gguf``): on x86 llama.cpp has
batched matmul kernels for Q8_0 and Q4_0 but not for the starter's Q4_1.
"""

from __future__ import annotations

import argparse
import statistics
import time

from plumb.core.records import Chat, ModelSpec, SamplingParams

PROMPTS = [
    "What should I pack for a weekend hiking trip?",
    "How do I keep basil alive on a windowsill?",
    "Give me three ideas for a quick weeknight dinner.",
    "How can I fall asleep faster?",
    "What is a polite way to decline a meeting invitation?",
    "Explain compound interest to a teenager.",
    "How often should I water a cactus?",
    "Suggest a short morning stretching routine.",
]


def run(spec: ModelSpec, params: SamplingParams, batched: bool) -> tuple[int, float, int]:
    """(generated tokens, seconds, answers that stopped on their own) for PROMPTS."""
    from plumb import llamacpp

    chats = [Chat.from_user(p) for p in PROMPTS]
    t0 = time.perf_counter()
    out = llamacpp.generate(spec, chats, params, batched=batched)
    seconds = time.perf_counter() - t0
    answers = [c for row in out for c in row]
    assert len(answers) == len(PROMPTS) * params.n
    return sum(c.completion_tokens for c in answers), seconds, sum(c.finish_reason == "stop" for c in answers)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gguf", help="GGUF model (default: the starter, pulled once)")
    ap.add_argument("--k", type=int, default=4, help="answers per prompt")
    ap.add_argument("--tokens", type=int, default=96, help="max new tokens per answer")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()

    from plumb import llamacpp

    gguf = args.gguf
    if not gguf:
        from plumb.models import starter

        gguf, _ = starter.pull()
    spec = ModelSpec("llamacpp", str(gguf))
    params = SamplingParams(n=args.k, temperature=args.temperature, max_tokens=args.tokens, seed=args.seed)
    warm = SamplingParams(n=2, temperature=args.temperature, max_tokens=2, seed=0)
    llamacpp.generate(spec, [Chat.from_user("hi")], warm, batched=False)  # load the model
    llamacpp.generate(spec, [Chat.from_user("hi")], warm, batched=True)  # and make its batch context
    loaded = llamacpp.load(str(gguf))
    print(f"model {gguf}\nthreads {llamacpp.cpu_threads()}, context {loaded.n_ctx}, batch context "
          f"{loaded.batch.cells} cells x {loaded.batch.seqs} sequences")
    print(f"{len(PROMPTS)} prompts x {args.k} answers, <= {args.tokens} tokens, temperature {args.temperature}",
          flush=True)

    best: dict[bool, float] = {}
    ratios = []
    for r in range(args.rounds):
        rates = {}
        for batched in ((False, True) if r % 2 == 0 else (True, False)):  # ABBA: drifting load hits both
            tokens, seconds, stopped = run(spec, params, batched)
            rates[batched] = tokens / seconds
            print(f"  round {r + 1} {'batched' if batched else 'one at a time':>13}: {tokens} tokens in "
                  f"{seconds:.2f} s = {rates[batched]:.1f} tok/s ({stopped} answers ended before the limit)",
                  flush=True)
            best[batched] = max(best.get(batched, 0.0), rates[batched])
        ratios.append(rates[True] / rates[False])
        print(f"  round {r + 1} ratio {ratios[-1]:.2f}x", flush=True)
    one, many = best[False], best[True]
    print(f"one at a time {one:.1f} tok/s | batched {many:.1f} tok/s | ratio {many / one:.2f}x "
          f"(best of each; median round ratio {statistics.median(ratios):.2f}x; target >= 2x)")


if __name__ == "__main__":
    main()
