"""Builtin GRPO: a LoRA policy trained against verifiable rewards (``plumb train grpo``).

A thin plugin over ``plumb.train.grpo``. The run's rows are tasks (prompt
messages plus ``tests``/``answer``/``schema``/``meta``), the reward weights are
``run.config["rewards"]`` (checked against the installed verifiers by the train
stage before any work), rewards come through ``ctx.reward`` and never from
another plugin. Every completion is written to ``OUT/rollouts.jsonl``; the train
stage stores them. torch is imported only when a run starts.
"""

from __future__ import annotations

from pathlib import Path

from plumb.core.hookspecs import hookimpl
from plumb.core.records import RunResult, RunSpec
from plumb.train.options import GRPOConfig


@hookimpl
def plumb_register_methods(register) -> None:
    register("grpo", "GRPO: G answers per prompt scored by verifiers, group-relative advantages, clipped "
             "surrogate + KL to the reference, LoRA; rollouts by llama.cpp (CPU) or transformers",
             options=GRPOConfig)


@hookimpl
def plumb_optimize(ctx, method: str, run: RunSpec) -> RunResult | None:
    if method != "grpo":
        return None
    from plumb.train.grpo import train

    result = train(run, ctx)
    if run.config.get("gguf"):
        from plumb.export.lora_to_gguf import export_lora

        out = Path(run.out_dir) / "adapter.gguf"
        export_lora(result.adapter_dir, out, base_dir=run.policy.target)
        result.artifacts.append(("gguf-lora", str(out)))
    return result
