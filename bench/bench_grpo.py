"""plumb's GRPO against TRL's GRPOTrainer: same model, prompts, reward, G, completion length and steps.

    bash bench/setup_trl.sh                      # once: TRL in its own venv, bench/.venv-trl
    python bench/bench_grpo.py                   # starter model (SmolLM2-135M-Instruct), 30 steps
    python bench/bench_grpo.py --steps 20 --workers trl,plumb,plumb-hf
    python bench/bench_grpo.py --workers plumb,plumb-serve --servers 2 --threads 2 --no-parallel

Each trainer runs in its own subprocess (so peak RSS is its own); by default
all at the same time with one thread each, so a shared machine's load hits them
alike, and completions per CPU-second (which that load moves little) are
printed beside completions per wall-second: TRL (from bench/.venv-trl, transformers
``generate`` rollouts — TRL's path without vLLM), plumb with llama.cpp rollouts
(its CPU default: the LoRA exported to GGUF after every update and swapped in
on the starter's GGUF) and, optionally, plumb with transformers rollouts, or
plumb with its rollouts from ``--servers`` local ``plumb serve`` processes on the
starter's GGUF (``plumb-serve``: the LoRA saved after every update and loaded by
the servers; the worker's threads are shared among its servers).

Identical on both sides: the starter's HF copy in fp32, LoRA r 16 / alpha 32 /
dropout 0 on the seven projections, prompts from the bundled concise pairs in file
order (no shuffling), G = 4 completions for each of 2 prompts a step, at most
32 new tokens, temperature 1, top-p 1, AdamW at the same learning rate with
linear decay and no warmup, beta (KL) 0.04 with the reference = the adapter
disabled, epsilon 0.2, one iteration, loss_type dapo, rewards scaled by the
group's std. The reward is plumb's ``max_sentences`` check with n = 1 (1 when
the answer is one sentence: on the starter about a third of the answers, with
spread in most groups), called as the same Python function by both. TRL settings changed from its defaults to match: ``bf16 =
False`` (TRL autocasts to bf16 on CPU too), ``beta = 0.04`` (TRL's default is
0), ``learning_rate`` (TRL's 1e-6 is for full fine-tuning).

Printed: completions per second of training wall time (first step to last),
peak RSS, the per-step mean reward of each side by side, the mean reward of the
last 10 steps, and the held-out reward before and after (the same sampler
for both: 4 samples on each of 16 held-out prompts, transformers, fixed seeds).
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


def prompts(a) -> tuple[list[str], list[str]]:
    rows = [json.loads(x) for x in (ROOT / "plumb" / "data" / "concise_pairs.jsonl").read_text().splitlines() if x]
    texts = list(dict.fromkeys(r["prompt"] for r in rows))
    return texts[:len(texts) - a.heldout], texts[len(texts) - a.heldout:]


CHECK = {"verifier": "max_sentences", "params": {"n": 1}}


def reward(text: str) -> float:
    """plumb's ``max_sentences`` check with n = 1 (answer in one sentence), the same function for both."""
    from plumb.core.records import Chat, Completion, Task
    from plumb.plugins.verifiers import CHECKS, _text_check

    return _text_check("max_sentences", CHECKS["max_sentences"][0])(Task(Chat(()), meta={"check": CHECK}),
                                                                   Completion(text, "bench", "bench")).value


def heldout(model, tok, held: list[str], a) -> float:
    """Mean reward of 4 samples per held-out prompt (transformers sampling, fixed seed)."""
    from plumb.core.records import Chat, SamplingParams
    from plumb.train.generate import sample_batch

    s = sample_batch(model, tok, [Chat.from_user(p) for p in held],
                     SamplingParams(n=4, temperature=1.0, top_p=1.0, max_tokens=a.max_tokens, seed=1234))
    return sum(reward(t) for t in s.texts) / len(s.texts)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- workers ---------------------------------------------------------------------------------------------


def work_plumb(a, rollouts: str) -> dict:
    import torch

    from plumb.core.context import HookContext
    from plumb.core.plugins import get_plugin_manager
    from plumb.core.records import ModelSpec, RunSpec
    from plumb.train import grpo, loop
    from plumb.train.options import GRPOConfig

    train, held = prompts(a)
    cfg = {"rewards": {"max_sentences": 1.0}, "steps": a.steps, "num_generations": a.G, "prompts_per_step": a.prompts,
           "max_completion_length": a.max_tokens, "lr": a.lr, "beta": a.beta, "schedule": "linear",
           "warmup_ratio": 0.0, "rollouts": rollouts, "holdout": 0.0, "eval_every": 0, "shuffle": False,
           "checkpoint_every": 10**9, "seed": a.seed, "lora_dropout": 0.0, "batch_size": a.G * a.prompts}
    policy = loop.load_policy(a.model, GRPOConfig.from_dict(cfg), "cpu")
    before = heldout(*policy, held, a)
    rows = [{"messages": [{"role": "user", "content": p}], "meta": {"check": CHECK}} for p in train]
    marks = []
    with tempfile.TemporaryDirectory() as out:
        t0 = (time.perf_counter(), time.process_time())
        grpo.train(RunSpec("grpo", ModelSpec("hf", a.model), rows, out, cfg),
                   HookContext(get_plugin_manager(), lambda e: marks.append(((time.perf_counter(),
                                                                             time.process_time()), e))),
                   policy=policy)
    steps = [(t, e.values) for t, e in marks if e.kind == "metric"]
    return {"t_start": t0, "t_steps": [t for t, _ in steps], "rewards": [v["reward"] for _, v in steps],
            "lengths": [v["completions/mean_length"] for _, v in steps], "peak_rss_mb": rss_mb(),
            "threads": torch.get_num_threads(), "heldout_before": before, "heldout_after": heldout(*policy, held, a),
            "gap": [v.get("sampling/logp_gap_per_token/mean") for _, v in steps if
                    "sampling/logp_gap_per_token/mean" in v],
            "time_sampling": sum(v["time/sampling"] for _, v in steps),
            "time_training": sum(v["time/training"] for _, v in steps)}


def work_plumb_serve(a) -> dict:
    """work_plumb with its rollouts from ``a.servers`` local `plumb serve` processes (threads shared among them)."""
    import socket
    import urllib.request

    from plumb.models import starter

    procs, urls = [], []
    env = {**os.environ, "PLUMB_THREADS": str(max(1, int(os.environ.get("PLUMB_THREADS", "1")) // a.servers))}
    try:
        for _ in range(a.servers):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            procs.append(subprocess.Popen([sys.executable, "-m", "plumb", "serve", str(starter.gguf_path()),
                                           "--hf", a.model, "--port", str(port)], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            urls.append(f"http://127.0.0.1:{port}/v1")
        for url in urls:
            for _ in range(300):
                try:
                    urllib.request.urlopen(url + "/models", timeout=1)
                    break
                except OSError:
                    time.sleep(0.2)
        return work_plumb(a, "openai:" + ",".join(urls))
    finally:
        for proc in procs:
            proc.kill()


def work_trl(a) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    train, held = prompts(a)
    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in train])

    def one_sentence(prompts, completions, **kwargs):
        return [reward(c[0]["content"] if isinstance(c, list) else c) for c in completions]

    logs, times = [], {}

    class Clock(TrainerCallback):
        def on_train_begin(self, *args, **kwargs):
            times["start"] = (time.perf_counter(), time.process_time())

        def on_step_end(self, *args, **kwargs):
            times.setdefault("steps", []).append((time.perf_counter(), time.process_time()))

        def on_log(self, args, state, control, logs_=None, **kwargs):
            logs.append(dict(kwargs.get("logs") or logs_ or {}))

    args = trl.GRPOConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=a.G * a.prompts, gradient_accumulation_steps=1,
        num_generations=a.G, max_completion_length=a.max_tokens, max_steps=a.steps, learning_rate=a.lr,
        lr_scheduler_type="linear", warmup_steps=0, beta=a.beta, epsilon=0.2, num_iterations=1, loss_type="dapo",
        scale_rewards="group", temperature=1.0, top_p=1.0, logging_steps=1, save_strategy="no", report_to=[],
        seed=a.seed, shuffle_dataset=False, use_cpu=True, bf16=False, max_grad_norm=1.0, weight_decay=0.0,
        dataloader_num_workers=0)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM")
    trainer = trl.GRPOTrainer(model=model, reward_funcs=one_sentence, args=args, train_dataset=ds,
                              processing_class=tok, peft_config=lora, callbacks=[Clock()])
    before = heldout(trainer.model, tok, held, a)
    trainer.train()
    steps = [entry for entry in logs if "reward" in entry]
    return {"t_start": times["start"], "t_steps": times["steps"], "rewards": [s["reward"] for s in steps],
            "lengths": [s.get("completions/mean_length") for s in steps], "peak_rss_mb": rss_mb(),
            "threads": torch.get_num_threads(), "heldout_before": before,
            "heldout_after": heldout(trainer.model, tok, held, a), "trl": trl.__version__}


# -- the comparison ----------------------------------------------------------------------------------------


def spawn_all(jobs: list[tuple], threads: int, parallel: bool) -> list[dict]:
    """Run the workers (at the same time with ``parallel``) and return their results in order."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": str(threads), "PLUMB_THREADS": str(threads)}
    outs, procs = [], []
    for python, who, argv in jobs:
        out = Path(tempfile.mkstemp(suffix=".json")[1])
        procs.append((who, subprocess.Popen([str(python), __file__, "--worker", who, "--result", str(out), *argv],
                                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)))
        outs.append(out)
        if not parallel:
            procs[-1][1].wait()
    for who, proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            sys.exit(f"{who} worker failed:\n{err[-4000:]}")
    return [json.loads(out.read_text()) for out in outs]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="HF model dir (default: the starter's HF copy)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--G", type=int, default=4)
    p.add_argument("--prompts", type=int, default=2, help="prompts per step")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--beta", type=float, default=0.04)
    p.add_argument("--heldout", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch and llama.cpp threads per worker")
    p.add_argument("--parallel", action=argparse.BooleanOptionalAction, default=True,
                   help="run the workers at the same time (fair under a shared machine's load)")
    p.add_argument("--workers", default="trl,plumb",
                   help="comma-separated: trl, plumb (llama.cpp), plumb-hf, plumb-serve (a pool of `plumb serve`)")
    p.add_argument("--servers", type=int, default=2, help="plumb-serve: how many servers")
    p.add_argument("--worker", choices=["plumb", "plumb-hf", "plumb-serve", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    a = p.parse_args()

    if a.worker:
        result = (work_trl(a) if a.worker == "trl" else work_plumb_serve(a) if a.worker == "plumb-serve" else
                  work_plumb(a, "hf" if a.worker == "plumb-hf" else "llamacpp"))
        Path(a.result).write_text(json.dumps(result))
        return

    if a.model is None:
        from plumb.models import starter

        a.model = str(starter.hf_dir())
    workers = a.workers.split(",")
    if "trl" in workers and not TRL_PYTHON.exists():
        sys.exit("TRL is not set up: run `bash bench/setup_trl.sh` first.")
    argv = [f"--model={a.model}", f"--steps={a.steps}", f"--G={a.G}", f"--prompts={a.prompts}",
            f"--max-tokens={a.max_tokens}", f"--lr={a.lr}", f"--beta={a.beta}",
            f"--heldout={a.heldout}", f"--seed={a.seed}", f"--servers={a.servers}"]
    n = a.G * a.prompts
    print(f"model {a.model}\n{a.steps} steps x {a.prompts} prompts x G {a.G} = {n} completions a step, max "
          f"{a.max_tokens} new tokens, reward: max_sentences n=1, lr {a.lr}, beta {a.beta}, "
          f"{a.threads} threads, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    t = time.time()
    done = spawn_all([(TRL_PYTHON if w == "trl" else sys.executable, w, argv) for w in workers], a.threads, a.parallel)
    results = dict(zip(workers, done))
    print(f"all workers done in {time.time() - t:.0f} s (load average now {os.getloadavg()[0]:.1f})")
    print(f"\n{'step':>4}" + "".join(f"{w:>12}" for w in workers) + "   (mean reward of the step's completions)")
    for s in range(a.steps):
        print(f"{s + 1:>4}" + "".join(f"{results[w]['rewards'][s]:12.3f}" if s < len(results[w]["rewards"])
                                      else f"{'-':>12}" for w in workers))
    print(f"\n{'':34}" + "".join(f"{w:>12}" for w in workers))

    def row(name, fn, fmt="12.2f"):
        print(f"{name:34}" + "".join(format(fn(results[w]), fmt) for w in workers))

    def rate(r, clock):
        return a.steps * n / (r["t_steps"][-1][clock] - r["t_start"][clock])

    row("completions/s (training wall time)", lambda r: rate(r, 0))
    row("completions per CPU-second", lambda r: rate(r, 1))
    row("seconds per step (wall)", lambda r: n / rate(r, 0))
    row("completion tokens/s (wall)", lambda r: sum(x * n for x in r["lengths"]) / (r["t_steps"][-1][0] - r["t_start"][0]))
    row("peak RSS MB", lambda r: r["peak_rss_mb"], "12.0f")
    row("mean reward, first 5 steps", lambda r: sum(r["rewards"][:5]) / 5, "12.3f")
    row("mean reward, last 10 steps", lambda r: sum(r["rewards"][-10:]) / len(r["rewards"][-10:]), "12.3f")
    row("held-out reward before", lambda r: r["heldout_before"], "12.3f")
    row("held-out reward after", lambda r: r["heldout_after"], "12.3f")
    row("mean completion tokens, last 10", lambda r: sum(r["lengths"][-10:]) / len(r["lengths"][-10:]), "12.1f")
    if "trl" in results and len(workers) > 1:
        for w in workers:
            if w != "trl":
                print(f"{w} / TRL: completions per wall-second {rate(results[w], 0) / rate(results['trl'], 0):.2f}x, "
                      f"per CPU-second {rate(results[w], 1) / rate(results['trl'], 1):.2f}x")
    for w in workers:
        if results[w].get("gap"):
            print(f"{w}: sampler/trainer log-prob gap per token {results[w]['gap']}; sampling "
                  f"{results[w]['time_sampling']:.0f} s, training {results[w]['time_training']:.0f} s")
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / f"grpo-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps({"argv": argv, **results}))


if __name__ == "__main__":
    main()
