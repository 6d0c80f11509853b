"""Inference benchmark: llama.cpp (f16, q8_0, q4_k_m) vs transformers decode, and prefix reuse.

    python bench/bench_inference.py                      # the pulled starter model
    python bench/bench_inference.py --gguf M.gguf --hf DIR --tokens 128 --threads 2

1. Export the HF model to GGUF with plumb's exporter (f16) and quantize it
   (q8_0, q4_k_m) with llama.cpp's quantizer; also time the original GGUF if given.
2. Decode tokens/s, greedy, same prompts: each GGUF through plumb's llama.cpp
   backend vs transformers ``generate`` (fp32, KV cache on, CPU), with ratios;
   configurations interleaved, each keeping its best of ``--rounds`` rounds.
3. Greedy agreement (16 tokens) of every GGUF with transformers fp32.
4. Judge workload: one long shared constitution preamble, many short answers
   to judge, one token each (as a judge reading p("A") vs p("B") does): with the
   KV cache of the shared prefix reused (the default) and with it dropped
   before every request.

Targets (issue 3): llama.cpp q8_0 >= 3x transformers decode tok/s; prefix reuse
>= 2x on the judge workload. Not a test: numbers move with the machine's load.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from plumb.core.records import Chat, ModelSpec, SamplingParams

PROMPTS = [
    "Explain in a few sentences why the sky is blue.",
    "Write a short poem about a river in autumn.",
]
PREAMBLE = (
    "You are a careful judge. Read the constitution below, then the question and the answer, and say whether "
    "the answer follows the constitution. Reply with A if it does and B if it does not.\n\nConstitution:\n"
    + "\n".join(f"{i}. {p}" for i, p in enumerate([
        "Put the conclusion first, then the detail that supports it.",
        "Prefer short, plain sentences; cut words that carry nothing.",
        "Say what you do not know instead of guessing, and say how sure you are.",
        "Code examples carry type annotations and run as written.",
        "Never hand a learner the final answer; ask the question that leads them to it.",
        "Use numbers with units, and name the source of any figure you quote.",
        "Be kind about mistakes: name the mistake, then the fix, without blame.",
        "Keep lists to at most five items; merge or drop the rest.",
    ] * 3, 1))
)
MORE_PROMPTS = PROMPTS + [
    "What are three tips for writing clear code?", "Describe how a bicycle works to a child.",
    "Give me a recipe for pancakes.", "What is the capital of France, and why?",
    "How do I reverse a list in Python?", "Summarize the plot of Romeo and Juliet.",
    "Why do cats purr?", "List three uses of a paperclip.", "What causes rain?", "Translate 'good morning' to Spanish.",
]
ANSWERS = ["Yes.", "No, it is blue because of Rayleigh scattering.", "I am not sure.", "42 km.",
           "First the conclusion, then detail.", "Try again!", "Here is code: def f(x: int) -> int: ...",
           "What do you think happens next?"] * 2


def decode_llamacpp(path: Path, tokens: int) -> tuple[int, float]:
    """(new tokens, seconds) for greedy answers to PROMPTS, one prompt at a time."""
    from plumb import llamacpp

    spec, params = ModelSpec("llamacpp", str(path)), SamplingParams(temperature=0, max_tokens=tokens)
    n, t0 = 0, time.perf_counter()
    for p in PROMPTS:
        n += llamacpp.generate(spec, [Chat.from_user(p)], params)[0][0].completion_tokens
    return n, time.perf_counter() - t0


_RAW: dict[str, object] = {}


def decode_raw(path: Path, tokens: int) -> tuple[int, float]:
    """The same greedy answers through llama-cpp-python's own API (create_chat_completion,
    the chat template llama-cpp-python takes from the GGUF's metadata), with no plumb code in the loop."""
    from llama_cpp import Llama

    from plumb.llamacpp import cpu_threads

    if str(path) not in _RAW:
        _RAW[str(path)] = Llama(model_path=str(path), n_ctx=2048, n_threads=cpu_threads(),
                                n_threads_batch=cpu_threads(), verbose=False)
    llm = _RAW[str(path)]
    n, t0 = 0, time.perf_counter()
    for p in PROMPTS:
        llm.reset()
        out = llm.create_chat_completion([{"role": "user", "content": p}], max_tokens=tokens, temperature=0.0)
        n += out["usage"]["completion_tokens"]
    return n, time.perf_counter() - t0


def decode_hf(hf_dir: Path, tokens: int) -> tuple[int, float]:
    from plumb.train import generate as hf_generate

    model, tok = hf_generate.load(str(hf_dir))
    params = SamplingParams(temperature=0, max_tokens=tokens)
    n, t0 = 0, time.perf_counter()
    for p in PROMPTS:  # one prompt at a time, like the llama.cpp side
        n += hf_generate.generate_with(model, tok, [Chat.from_user(p)], params)[0][0].completion_tokens
    return n, time.perf_counter() - t0


def greedy_texts(spec: ModelSpec, n_tokens: int) -> list[str]:
    from plumb import llamacpp
    from plumb.train import generate as hf_generate

    chats, params = [Chat.from_user(p) for p in MORE_PROMPTS], SamplingParams(temperature=0, max_tokens=n_tokens)
    if spec.backend == "hf":
        model, tok = hf_generate.load(spec.target)
        return [r[0].text for r in hf_generate.generate_with(model, tok, chats, params)]
    return [r[0].text for r in llamacpp.generate(spec, chats, params)]


def judge_rate(path: Path, reuse: bool) -> float:
    from plumb import llamacpp

    spec = ModelSpec("llamacpp", str(path))
    loaded = llamacpp.load(str(path))
    params = SamplingParams(temperature=0, max_tokens=1, logprobs=5)
    t0 = time.perf_counter()
    for a in ANSWERS:
        if not reuse:
            loaded.llm.n_tokens = 0  # forget the cached prefix: every request evaluates the whole prompt
        llamacpp.generate(spec, [Chat.from_user(f"{PREAMBLE}\n\nQuestion: is the sky blue?\nAnswer: {a}")], params)
    return len(ANSWERS) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", type=Path, help="an existing GGUF to time as well (default: the starter's)")
    ap.add_argument("--hf", type=Path, help="the Hugging Face model directory (default: the starter's)")
    ap.add_argument("--tokens", type=int, default=128, help="new tokens per prompt")
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds; each configuration keeps its best")
    ap.add_argument("--workdir", type=Path, help="where the exported GGUFs go; ones already there are reused")
    ap.add_argument("--threads", type=int, help="CPU threads for both torch and llama.cpp (default: all cores)")
    args = ap.parse_args()
    if args.threads:  # same thread count on both sides; on a shared machine 1 thread can beat 2
        import os

        import torch

        torch.set_num_threads(args.threads)
        os.environ["PLUMB_THREADS"] = str(args.threads)
    if args.hf is None or args.gguf is None:
        from plumb.models import starter

        args.hf = args.hf or starter.hf_dir()
        args.gguf = args.gguf or starter.gguf_path()

    from plumb.export import export_gguf

    work = args.workdir or Path(tempfile.mkdtemp(prefix="plumb-bench-"))
    files = {}
    for quant in ("f16", "q8_0", "q4_k_m"):
        t0, out = time.perf_counter(), work / f"model.{quant}.gguf"
        files[quant] = out if args.workdir and out.is_file() else export_gguf(args.hf, out, quant)
        print(f"export {quant:7s} {files[quant].stat().st_size / 1e6:7.1f} MB in {time.perf_counter() - t0:5.1f} s")
    if args.gguf:
        files["original"] = args.gguf

    # Interleave the configurations and keep each one's best round: other processes on a shared
    # machine slow some rounds down, never speed one up.
    runs = {"transformers fp32": lambda: decode_hf(args.hf, args.tokens)}
    runs.update({f"llama.cpp {name}": (lambda p=path: decode_llamacpp(p, args.tokens)) for name, path in files.items()})
    runs["raw llama-cpp-python q8_0"] = lambda: decode_raw(files["q8_0"], args.tokens)
    decode_raw(files["q8_0"], 4)
    decode_hf(args.hf, 4)
    for path in files.values():
        decode_llamacpp(path, 4)  # load and warm up
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            n, secs = fn()
            best[name] = max(best.get(name, 0.0), n / secs)
    hf_rate = best["transformers fp32"]
    print(f"\ndecode, greedy, {args.tokens} new tokens x {len(PROMPTS)} prompts, CPU, best of {args.rounds} rounds")
    for name, rate in best.items():
        print(f"  {name:26s}: {rate:7.1f} tok/s  ({rate / hf_rate:4.1f}x transformers)")

    n = 16
    ref = greedy_texts(ModelSpec("hf", str(args.hf)), n)
    print(f"\ngreedy continuations ({n} tokens, {len(MORE_PROMPTS)} prompts) identical to transformers fp32:")
    for name, path in files.items():
        got = greedy_texts(ModelSpec("llamacpp", str(path)), n)
        print(f"  {name:16s}: {sum(a == b for a, b in zip(ref, got))}/{len(ref)}")

    judge = files["q8_0"]
    judge_rate(judge, True)  # warm up
    with_reuse = max(judge_rate(judge, True) for _ in range(args.rounds))
    without = max(judge_rate(judge, False) for _ in range(args.rounds))
    print(f"\njudge workload (q8_0): {len(ANSWERS)} one-token judgments after a shared preamble")
    print(f"  with prefix reuse    : {with_reuse:6.1f} judgments/s")
    print(f"  without prefix reuse : {without:6.1f} judgments/s  -> reuse is {with_reuse / without:.1f}x")
    plumb_q8, raw_q8 = best["llama.cpp q8_0"], best["raw llama-cpp-python q8_0"]
    print(f"\nplumb's llama.cpp backend vs raw llama-cpp-python (q8_0): {plumb_q8 / raw_q8:.2f}x")
    for llm in _RAW.values():
        llm.close()


if __name__ == "__main__":
    main()
