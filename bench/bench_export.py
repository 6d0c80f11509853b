"""Export benchmark: per supported architecture, export time and parity with transformers.

    python bench/bench_export.py                 # tiny models of every architecture, then the starter
    python bench/bench_export.py --no-starter    # tiny models only (~1 minute)

For each architecture in tests/tiny.py ARCHS (a random model of that
architecture, hidden 64, with the tokenizer kind its real counterpart uses):

1. HF -> f16 GGUF (plumb's exporter): seconds; max |logit diff| llama.cpp vs
   transformers on a chat-formatted prompt + answer, argmax agreement over its
   positions, and greedy agreement over 16 new tokens;
2. peft LoRA (r 8 on every projection) -> GGUF LoRA: seconds; max |logit diff|
   of base GGUF + LoRA in llama.cpp vs the merged model in transformers;
3. the round trip of a person's GGUF, from f16 and from q8_0: GGUF -> HF copy
   (seconds; max |logit diff| copy vs the original HF model), LoRA trained on
   the copy applied on the original GGUF vs the merged copy.

Then the starter (SmolLM2-135M-Instruct, pulled): its HF copy -> f16 GGUF
(seconds, tokenization and logits parity, greedy agreement on 3 prompts x 24
tokens), and its original Q4_1 GGUF -> HF copy (seconds) -> LoRA on the copy,
applied on the Q4_1 file. Logits are of scale ~10-30; numbers move with the
machine's load, the parity numbers do not.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_export_arch import CHAT, TARGETS, chat_ids, hf_run, llama_run  # noqa: E402
from tests.tiny import ARCHS, build_arch, random_lora  # noqa: E402


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def lora_parity(base_gguf: Path, hf_dir: Path, ids: list[int], work: Path, seed: int = 2) -> tuple[float, float, float]:
    """(export seconds, max |diff| llama.cpp base + LoRA vs merged transformers, how far the LoRA moves logits)."""
    import torch

    from plumb.export import export_lora

    peft_model = random_lora(hf_dir, work / "adapter", TARGETS, r=8, std=0.1, seed=seed)
    out, seconds = timed(export_lora, work / "adapter", work / "adapter.gguf", base_dir=hf_dir)
    with torch.no_grad():
        want = peft_model.merge_and_unload().eval()(torch.tensor([ids])).logits[0].numpy()
    base, _ = hf_run(hf_dir, ids)
    got, _ = llama_run(base_gguf, ids, lora=out)
    shutil.rmtree(work / "adapter")
    return seconds, float(np.abs(got - want).max()), float(np.abs(want - base).max())


def bench_arch(arch: str, work: Path) -> dict:
    from plumb.core.cache import file_sha256
    from plumb.export import export_gguf
    from plumb.export.gguf_to_hf import make_hf_copy
    from plumb.export.quantize import quantize

    d = build_arch(arch, work / "hf")
    gguf, export_s = timed(export_gguf, d, work / "model.f16.gguf", "f16")
    _, ids = chat_ids(d)
    hf, hf_new = hf_run(d, ids, new_tokens=16)
    ll, ll_new = llama_run(gguf, ids, new_tokens=16)
    row = {"arch": arch, "export_s": export_s, "logit_diff": float(np.abs(hf - ll).max()),
           "scale": float(np.abs(hf).max()), "argmax": float((hf.argmax(-1) == ll.argmax(-1)).mean()),
           "greedy": sum(a == b for a, b in zip(hf_new, ll_new)) / 16}
    (work / "lora").mkdir()
    row["lora_s"], row["lora_diff"], row["lora_moves"] = lora_parity(gguf, d, ids, work / "lora")
    q8 = quantize(gguf, work / "model.q8_0.gguf", "q8_0")
    for tag, theirs in (("f16", gguf), ("q8_0", q8)):
        alone = work / f"theirs-{tag}"
        alone.mkdir()
        person = alone / theirs.name
        shutil.copy(theirs, person)
        copy, row[f"copy_{tag}_s"] = timed(make_hf_copy, person, work / f"copy-{tag}", sha256=file_sha256(person))
        row[f"copy_{tag}_diff"] = float(np.abs(hf_run(copy, ids)[0] - hf).max())
        (work / f"lora-{tag}").mkdir()
        _, row[f"rt_{tag}_diff"], _ = lora_parity(person, copy, ids, work / f"lora-{tag}", seed=3)
    return row


def bench_starter(work: Path) -> None:
    from plumb.models import starter
    from plumb.core.cache import file_sha256
    from plumb.export import export_gguf
    from plumb.export.gguf_to_hf import make_hf_copy
    from tests.test_export_gguf import PROMPTS

    gguf_q41, hf_dir = starter.pull()
    out, seconds = timed(export_gguf, hf_dir, work / "starter.f16.gguf", "f16")
    text, ids = chat_ids(hf_dir)
    from tests.test_export_arch import load_llama

    llm = load_llama(out, logits_all=False)
    same_ids = llm.tokenize(text.encode(), add_bos=False, special=True) == ids
    llm.close()
    hf, _ = hf_run(hf_dir, ids)
    ll, _ = llama_run(out, ids)
    agree = total = 0
    for prompt in PROMPTS[:3]:
        _, p_ids = chat_ids(hf_dir, [CHAT[0], {"role": "user", "content": prompt}])
        _, a = hf_run(hf_dir, p_ids, new_tokens=24)
        _, b = llama_run(out, p_ids, new_tokens=24)
        agree += sum(x == y for x, y in zip(a, b))
        total += 24
    print(f"\nstarter (SmolLM2-135M-Instruct, llama): HF copy -> f16 GGUF {seconds:.1f} s; chat ids identical: "
          f"{same_ids}; max |logit diff| {np.abs(hf - ll).max():.4f} (scale {np.abs(hf).max():.1f}); argmax "
          f"agreement {(hf.argmax(-1) == ll.argmax(-1)).mean():.3f}; greedy tokens agreeing {agree}/{total}")

    alone = work / "theirs"
    alone.mkdir()
    person = alone / gguf_q41.name
    shutil.copy(gguf_q41, person)
    copy, copy_s = timed(make_hf_copy, person, work / "starter-copy", sha256=file_sha256(person))
    _, ids = chat_ids(copy)
    (work / "starter-lora").mkdir()
    lora_s, diff, moves = lora_parity(person, copy, ids, work / "starter-lora", seed=3)
    hf_copy, _ = hf_run(copy, ids)
    q41, _ = llama_run(person, ids)
    print(f"starter Q4_1 GGUF -> HF copy {copy_s:.1f} s (copy vs the Q4_1 file in llama.cpp: max |logit diff| "
          f"{np.abs(hf_copy - q41).max():.3f}, argmax {(hf_copy.argmax(-1) == q41.argmax(-1)).mean():.3f}); "
          f"LoRA on the copy -> GGUF LoRA {lora_s:.2f} s; on the Q4_1 original vs merged copy: max |logit diff| "
          f"{diff:.3f} (the LoRA moves logits by {moves:.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-starter", action="store_true", help="tiny models only")
    parser.add_argument("--arch", action="append", choices=list(ARCHS), help="only these architectures")
    args = parser.parse_args()
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    rows = []
    with tempfile.TemporaryDirectory(prefix="plumb-bench-export-") as tmp:
        for arch in args.arch or list(ARCHS):
            work = Path(tmp) / arch
            work.mkdir()
            rows.append(bench_arch(arch, work))
            shutil.rmtree(work)
        print("\n| arch | HF->GGUF s | logit diff (scale) | argmax | greedy 16 | LoRA->GGUF s | LoRA diff (moves) "
              "| GGUF->HF copy s f16/q8_0 | copy vs HF f16/q8_0 | LoRA on their GGUF f16/q8_0 |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['arch']} | {r['export_s']:.2f} | {r['logit_diff']:.4f} ({r['scale']:.0f}) | {r['argmax']:.3f} "
                  f"| {r['greedy']:.2f} | {r['lora_s']:.2f} | {r['lora_diff']:.4f} ({r['lora_moves']:.0f}) "
                  f"| {r['copy_f16_s']:.1f} / {r['copy_q8_0_s']:.1f} | {r['copy_f16_diff']:.4f} / "
                  f"{r['copy_q8_0_diff']:.3f} | {r['rt_f16_diff']:.4f} / {r['rt_q8_0_diff']:.3f} |")
        if not args.no_starter:
            work = Path(tmp) / "starter"
            work.mkdir()
            bench_starter(work)


if __name__ == "__main__":
    main()
