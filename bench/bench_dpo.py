"""plumb's DPO loop against TRL's DPOTrainer: same model, data, LoRA, batch, steps.

    bash bench/setup_trl.sh                      # once: TRL in its own venv, bench/.venv-trl
    python bench/bench_dpo.py                    # starter model (SmolLM2-135M-Instruct), the bundled concise pairs
    python bench/bench_dpo.py --limit 48 --steps 12 --max-length 256 --batch-size 4

Three runs, each in its own subprocess so peak RSS is measured fairly: TRL
(from bench/.venv-trl), plumb with the reference forward in every step like
TRL, and plumb with its default of reference log-probs precomputed once. Both see the same pairs in the
same order (no shuffling), rendered through the same chat template: TRL gets
the templated prompt as text, appends EOS and tokenizes ``prompt + answer``,
exactly what plumb does. Both use LoRA r 16 / alpha 32 / dropout 0.05 on the
seven projections (TRL's disable_dropout is turned off to match), AdamW,
linear decay without warmup, fp32 on CPU (TRL's default is bf16 autocast even on
CPU: turned off), and the same activation-checkpointing setting
(--gradient-checkpointing; TRL's own default is on, plumb's off).

Printed: the step-1 loss and log-probs of both (same batch, adapter at zero, so
they must agree), training tokens per second of CPU time and of wall time
(steady state: steps 2..N; and end to end: from the first step to the last,
including plumb's reference precompute), peak RSS of each process, and the
held-out reward accuracy of each adapter, all measured by the same function
(plumb.train.loop.completion_logps). By default the three workers run at the
same time with one thread each: on a machine shared with other work, CPU time
per token is the number that load does not move much, and running together
exposes all three to the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRL_PYTHON = ROOT / "bench" / ".venv-trl" / "bin" / "python"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def load_rows(path: str, limit: int, heldout: int) -> tuple[list[dict], list[dict]]:
    """(the first ``limit`` pairs to train on, the last ``heldout`` pairs to evaluate on)."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if limit + heldout > len(rows):
        sys.exit(f"{path} has {len(rows)} pairs: --limit {limit} + --heldout {heldout} overlap")
    return rows[:limit], rows[len(rows) - heldout:]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def heldout_accuracy(model, tok, held: list[dict], beta: float) -> dict:
    """Implicit-reward accuracy and margin on held-out pairs, policy vs adapter-off reference."""
    import torch

    from plumb.train import data, loop

    ex = data.prepare(held, tok, "dpo", 4096).examples
    model.eval()
    pol, ref = [], []
    with torch.no_grad():
        for i in range(0, len(ex), 4):
            batch = data.collate_pairs(ex[i:i + 4], tok.pad_token_id)
            pol.append(loop.completion_logps(model, batch)[0])
            with model.disable_adapter():
                ref.append(loop.completion_logps(model, batch)[0])
    ratio = torch.cat([torch.stack(p.chunk(2), 1) for p in pol]) - torch.cat([torch.stack(r.chunk(2), 1) for r in ref])
    margin = beta * (ratio[:, 0] - ratio[:, 1])
    return {"heldout_accuracy": float((margin > 0).float().mean()), "heldout_margin": float(margin.mean())}


def step_tokens(rows, tok, batch_size: int, steps: int, max_length: int) -> list[int]:
    from plumb.train import data

    ex = data.prepare(rows, tok, "dpo", max_length).examples
    out = []
    for s in range(steps):
        i = (s * batch_size) % len(ex)
        out.append(sum(e.tokens for e in ex[i:i + batch_size]))
    return out


# -- workers: one trainer per process ------------------------------------------------------------------


def work_plumb(a) -> dict:
    import torch

    from plumb.core.context import HookContext
    from plumb.core.records import Event, ModelSpec, RunSpec
    from plumb.train import TrainConfig, loop

    rows, held = load_rows(a.pairs, a.limit, a.heldout)
    cfg = {"steps": a.steps, "batch_size": a.batch_size, "lr": a.lr, "beta": a.beta, "max_length": a.max_length,
           "schedule": "linear", "warmup_ratio": 0.0, "seed": a.seed, "shuffle": False,
           "precompute_ref": a.precompute, "gradient_checkpointing": a.gradient_checkpointing,
           "checkpoint_every": 10**9, "keep_checkpoints": 1}
    policy = loop.load_policy(a.model, TrainConfig(**{k: v for k, v in cfg.items() if k != "steps"}), "cpu")
    marks: list[tuple[str, tuple[float, float], Event]] = []
    with tempfile.TemporaryDirectory() as out:
        run = RunSpec("dpo", ModelSpec("hf", a.model), rows, out, cfg)
        sink = HookContext(None, lambda e: marks.append((e.kind, (time.perf_counter(), time.process_time()), e)))
        loop.train(run, sink, policy=policy)
    peak = rss_mb()
    start = next(t for k, t, e in marks if k == "log" and "rows to train on" in e.message)
    steps = [(t, e.values) for k, t, e in marks if k == "metric"]
    return {"first": steps[0][1], "last": steps[-1][1], "t_start": start, "t_steps": [t for t, _ in steps],
            "peak_rss_mb": peak, "threads": torch.get_num_threads(),
            **heldout_accuracy(policy[0], policy[1], held, a.beta)}


def work_trl(a) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from plumb.train import data

    rows, held = load_rows(a.pairs, a.limit, a.heldout)
    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    # the prompt rendered by the chat template, as text: TRL then tokenizes prompt + answer + EOS like plumb
    ds = Dataset.from_list([{"prompt": data.prompt_text(tok, [{"role": "user", "content": r["prompt"]}]),
                             "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows])
    logs, times = [], {}

    class Clock(TrainerCallback):
        def on_train_begin(self, *args, **kwargs):
            times["start"] = (time.perf_counter(), time.process_time())

        def on_step_end(self, *args, **kwargs):
            times.setdefault("steps", []).append((time.perf_counter(), time.process_time()))

        def on_log(self, args, state, control, logs_=None, **kwargs):
            logs.append(dict(kwargs.get("logs") or logs_ or {}))

    args = trl.DPOConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=a.batch_size, gradient_accumulation_steps=1,
        max_steps=a.steps, learning_rate=a.lr, lr_scheduler_type="linear", warmup_steps=0, beta=a.beta,
        max_length=a.max_length, logging_steps=1, save_strategy="no", report_to=[], seed=a.seed,
        disable_dropout=False, train_sampling_strategy="sequential", use_cpu=True, max_grad_norm=1.0,
        weight_decay=0.0, dataloader_num_workers=0, precompute_ref_log_probs=a.precompute,
        gradient_checkpointing=a.gradient_checkpointing, bf16=False)  # TRL defaults to bf16 autocast, on CPU too
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=TARGETS, task_type="CAUSAL_LM")
    trainer = trl.DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=lora,
                             callbacks=[Clock()])
    trainer.train()
    peak = rss_mb()
    steps = [entry for entry in logs if "loss" in entry]
    return {"first": steps[0], "last": steps[-1], "t_start": times["start"], "t_steps": times["steps"],
            "peak_rss_mb": peak, "threads": torch.get_num_threads(),
            **heldout_accuracy(trainer.model, tok, held, a.beta)}


# -- the comparison --------------------------------------------------------------------------------------


def spawn_all(jobs: list[tuple], threads: int, parallel: bool) -> list[dict]:
    """Run the workers (at the same time with ``parallel``, so that a shared machine's load
    hits all of them alike) and return their results in order."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": str(threads)}
    outs, procs = [], []
    for python, who, argv in jobs:
        out = Path(tempfile.mkstemp(suffix=".json")[1])
        cmd = [str(python), __file__, "--worker", who, "--result", str(out), *argv]
        procs.append((who, subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                            text=True)))
        outs.append(out)
        if not parallel:
            procs[-1][1].wait()
    for who, proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            sys.exit(f"{who} worker failed:\n{err[-4000:]}")
    return [json.loads(out.read_text()) for out in outs]


def throughput(result: dict, tokens: list[int], clock: int) -> tuple[float, float]:
    """(steady: steps 2..N, end to end: incl. a reference precompute) tokens per second of
    wall time (clock 0) or of this process's CPU time (clock 1)."""
    t = [x[clock] for x in result["t_steps"]]
    return sum(tokens[1:]) / (t[-1] - t[0]), sum(tokens) / (t[-1] - result["t_start"][clock])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="HF model dir (default: the starter's HF copy, else the tiny model)")
    p.add_argument("--pairs", default=str(ROOT / "plumb" / "data" / "concise_pairs.jsonl"))
    p.add_argument("--heldout", type=int, default=16, help="the last N pairs of --pairs are held out")
    p.add_argument("--limit", type=int, default=32, help="train on the first N pairs")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precompute", action=argparse.BooleanOptionalAction, default=False, help=argparse.SUPPRESS)
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=False,
                   help="activation checkpointing in both trainers (TRL's own default is on; plumb's is off)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (OMP_NUM_THREADS)")
    p.add_argument("--parallel", action=argparse.BooleanOptionalAction, default=True,
                   help="run the three workers at the same time (fair under a shared machine's load)")
    p.add_argument("--worker", choices=["plumb", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    a = p.parse_args()

    if a.worker:
        result = work_plumb(a) if a.worker == "plumb" else work_trl(a)
        Path(a.result).write_text(json.dumps(result))
        return

    if a.model is None:
        try:
            from plumb.models import starter

            a.model = str(starter.hf_dir())
        except Exception:
            from tests.tiny import build_tiny

            a.model = str(build_tiny(Path(tempfile.mkdtemp()) / "tiny"))
            print("starter model not pulled (`plumb models pull starter`); using the tiny test model")
    if not TRL_PYTHON.exists():
        sys.exit("TRL is not set up: run `bash bench/setup_trl.sh` first.")
    argv = [f"--model={a.model}", f"--pairs={a.pairs}", f"--heldout={a.heldout}", f"--limit={a.limit}",
            f"--steps={a.steps}", f"--batch-size={a.batch_size}", f"--max-length={a.max_length}", f"--lr={a.lr}",
            f"--beta={a.beta}", f"--seed={a.seed}",
            "--gradient-checkpointing" if a.gradient_checkpointing else "--no-gradient-checkpointing"]
    from transformers import AutoTokenizer

    tokens = step_tokens(load_rows(a.pairs, a.limit, a.heldout)[0], AutoTokenizer.from_pretrained(a.model), a.batch_size,
                         a.steps, a.max_length)
    print(f"model {a.model}\n{a.limit} pairs (held out: the last {a.heldout}), {a.steps} steps x {a.batch_size} pairs, max_length {a.max_length}, "
          f"{sum(tokens)} training tokens, gradient checkpointing "
          f"{'on' if a.gradient_checkpointing else 'off'} (both), {os.cpu_count()} CPUs")
    trl_r, same_r, pre_r = spawn_all([(TRL_PYTHON, "trl", argv + ["--no-precompute"]),
                                      (sys.executable, "plumb", argv + ["--no-precompute"]),
                                      (sys.executable, "plumb", argv + ["--precompute"])], a.threads, a.parallel)
    for key in ("loss", "logps/chosen", "logps/rejected", "rewards/margins"):
        x, y = same_r["first"][key], trl_r["first"][key]
        print(f"step-1 {key:<16} plumb {x:12.6f}  TRL {y:12.6f}  |diff| {abs(x - y):.2e}")
    print(f"{'':34}{'TRL':>10}{'plumb':>10}{'ratio':>8}{'plumb+pre':>11}{'ratio':>8}")
    rows = []
    for clock, unit in ((1, "tokens/CPU-s"), (0, "tokens/s wall")):
        t, x, y = (throughput(r, tokens, clock) for r in (trl_r, same_r, pre_r))
        rows += [(f"{unit}, steady (steps 2..N)", t[0], x[0], y[0]), (f"{unit}, end to end", t[1], x[1], y[1])]
    for name, t, x, y in rows:
        print(f"{name:34}{t:10.1f}{x:10.1f}{x / t:7.2f}x{y:11.1f}{y / t:7.2f}x")
    print(f"{'peak RSS MB':34}{trl_r['peak_rss_mb']:10.0f}{same_r['peak_rss_mb']:10.0f}{'':8}"
          f"{pre_r['peak_rss_mb']:11.0f}")
    print(f"{'final train loss':34}{trl_r['last']['loss']:10.4f}{same_r['last']['loss']:10.4f}{'':8}"
          f"{pre_r['last']['loss']:11.4f}")
    print(f"{'held-out reward accuracy':34}{trl_r['heldout_accuracy']:10.2f}{same_r['heldout_accuracy']:10.2f}{'':8}"
          f"{pre_r['heldout_accuracy']:11.2f}")
    print(f"{'held-out reward margin':34}{trl_r['heldout_margin']:10.3f}{same_r['heldout_margin']:10.3f}{'':8}"
          f"{pre_r['heldout_margin']:11.3f}")
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / f"dpo-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(
        json.dumps({"argv": argv, "tokens": tokens, "trl": trl_r, "plumb": same_r, "plumb_precompute": pre_r}))


if __name__ == "__main__":
    main()
