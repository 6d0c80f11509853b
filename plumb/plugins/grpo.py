"""Builtin GRPO: a LoRA policy trained against verifiable rewards (``plumb train grpo``).

A thin plugin over ``plumb.train.grpo``, as a method object that trains on
tasks (prompt messages plus ``tests``/``answer``/``schema``/``meta``). Before a
run it sets the reward weights (the config's ``rewards`` under ``--reward
NAME[=WEIGHT]``, every name an installed verifier; ``reward-model:PATH_OR_NAME``
is the ``reward-model`` verifier with that trained model, which the tasks then
name in ``meta.reward_model``), packs the constitution's checks into the
options as held-out signals, and checks a ``judge``. Rewards come through
``ctx.reward`` and never from another plugin. Every completion is written to
``OUT/rollouts.jsonl``; after the run, however it ended, ``ingest`` stores the
lines as samples of kind 'rollout' with their rewards. torch is imported only
when a run starts.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from plumb.core.errors import PlumbError
from plumb.core.hookspecs import hookimpl
from plumb.core.method import Method, Setup
from plumb.core.records import Reward, RunResult, RunSpec
from plumb.train.options import GRPOConfig

REWARD_MODEL = "reward-model"  # the verifier that scores with a trained reward model


class GRPO(Method):
    name = "grpo"
    description = ("GRPO: G answers per prompt scored by verifiers, group-relative advantages, clipped surrogate "
                   "+ KL to the reference, LoRA; rollouts by llama.cpp (CPU) or transformers")
    options = GRPOConfig
    data = "tasks"

    def configure(self, config: dict[str, Any], setup: Setup) -> dict[str, Any]:
        return {**config, "rewards": reward_weights(setup)[0]}

    def prepare(self, options: dict[str, Any], rows: list[dict[str, Any]], eval_rows: list[dict[str, Any]],
                setup: Setup) -> None:
        model = reward_weights(setup)[1]
        for row in rows + eval_rows if model else []:
            row["meta"] = {"reward_model": model, **(row.get("meta") or {})}
        const = setup.constitution
        options["checks"] = [{"principle": p.id, "verifier": c.verifier, "params": dict(c.params)}
                             for p in (const.principles if const is not None else []) for c in p.checks]
        if options.get("judge"):  # the judge reads the constitution; checked here, before the child starts
            if const is None:
                raise PlumbError(f"{self.name}: judge = {options['judge']!r} needs a constitution to judge against; "
                                 "run it in a workspace (plumb init) or drop the judge.", exit_code=2)
            setup.ctx.spec(options["judge"])
            options["constitution"] = const.model_dump(mode="json")

    def train(self, run: RunSpec, ctx) -> RunResult:
        from plumb.train.distributed import world
        from plumb.train.grpo import train

        result = train(run, ctx)
        if run.config.get("gguf") and world().main:  # under torchrun, rank 0 alone writes
            from plumb.export.lora_to_gguf import export_lora

            out = Path(run.out_dir) / "adapter.gguf"
            export_lora(result.adapter_dir, out, base_dir=run.policy.target)
            result.artifacts.append(("gguf-lora", str(out)))
        return result

    def resume(self, out_dir: str, run_id: int, step: int) -> None:
        trim_rollouts(out_dir, run_id, step)

    def ingest(self, store: Any, run_id: int, out_dir: str, prov: Any) -> str:
        return f"{ingest_rollouts(store, run_id, out_dir, prov)} rollouts stored"


@hookimpl
def plumb_register_methods(register) -> None:
    register(GRPO())


def reward_weights(setup: Setup) -> tuple[dict[str, float], str | None]:
    """({verifier: weight}, the trained reward model's directory or None), every name an installed verifier."""
    from plumb.core.rewards import parse_weights, validate_weights

    weights = {**parse_weights(setup.config.get("rewards") or {}), **parse_weights(list(setup.rewards))}
    model = None
    for name in [n for n in weights if n.startswith(REWARD_MODEL + ":")]:
        model = reward_model_dir(setup.runs_dir, name.split(":", 1)[1])
        weights[REWARD_MODEL] = weights.pop(name)
    if not weights:
        raise PlumbError("grpo needs rewards to optimize: --reward NAME[=WEIGHT] (repeatable), or rewards = "
                         "{NAME = WEIGHT} in the run config. `plumb plugins` lists the verifiers.", exit_code=2)
    validate_weights(setup.ctx.pm, weights)
    return weights, model


def reward_model_dir(runs_dir: Path, ref: str) -> str:
    """A trained reward model by path, or by name under the workspace's runs directory (its run directory)."""
    for base in (Path(ref).expanduser(), runs_dir / ref):
        for d in (base, base / "adapter"):
            if (d / "reward_model.json").is_file():
                return str(d.resolve())
    found = sorted(p.parent.parent.name for p in runs_dir.glob("*/adapter/reward_model.json"))
    raise PlumbError(f"--reward reward-model:{ref}: no reward model there (a directory `plumb train reward-model` "
                     f"wrote). Reward models in this workspace: {', '.join(found) or 'none'}.", exit_code=2)


def ingest_rollouts(store: Any, run_id: int, out_dir: str, prov: Any) -> int:
    """Store a run's ``OUT/rollouts.jsonl`` lines (this run's only, of steps not stored yet: a resumed run
    has them from its earlier attempt): a sample of kind 'rollout' with its provenance, its rewards and its
    rollout row (step, group, weighted reward, advantage)."""
    path = Path(out_dir) / "rollouts.jsonl"
    if not path.is_file():
        return 0
    n = 0
    stored = store.rollout_steps(run_id)
    with store.transaction():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                r = json.loads(line)
            except ValueError:  # a line cut short by a kill
                continue
            if r.get("run_id") != run_id or r.get("step") in stored:
                continue
            pid = store.add_prompt(r["messages"], source=f"{prov.plugin} run {run_id}")
            p = replace(prov, backend=r["sampler"], params={**r["params"], "step": r["step"]})
            sid = store.add_sample(pid, r["completion"], p, kind="rollout", finish_reason=r["finish_reason"])
            for w in r["rewards"]:
                detail = f"[{w['check']}] {w['detail']}" if w.get("check") else w["detail"]
                store.add_reward(sid, Reward(w["name"], w["value"], detail, w["status"], w["seconds"]), p)
            store.add_rollout(run_id, r["step"], r["group"], sid, r["reward"] or 0.0, r["advantage"])
            n += 1
    return n


def trim_rollouts(out_dir: str, run_id: int, from_step: int) -> None:
    """Before run ``run_id`` resumes at ``from_step``: drop its ``OUT/rollouts.jsonl`` lines of later steps
    (they are sampled again), so the file holds each step once."""
    path = Path(out_dir) / "rollouts.jsonl"
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except ValueError:  # a line cut short by a kill
            continue
        if r.get("run_id") != run_id or r.get("step", 0) <= from_step:
            keep.append(line + "\n")
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(keep), encoding="utf-8")
    tmp.replace(path)
