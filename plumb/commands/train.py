"""`plumb train METHOD`: tune a LoRA adapter from the terminal (pipeline.train).

METHOD is any method a plugin registers (`plumb plugins` lists them; the
builtins are dpo, ipo, hinge, kto, orpo, sft). Options come from flags over
``-o KEY=VALUE`` over an optional TOML run config, and are validated by the
method's registered options before any model loads.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import click

from plumb.commands import echo_json, session_from
from plumb.commands.progress import Progress
from plumb.core.errors import PlumbError


def _run_config(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    try:
        cfg = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlumbError(f"{path}: no such run config.", exit_code=2) from None
    except tomllib.TOMLDecodeError as exc:
        raise PlumbError(f"{path}: invalid TOML: {exc}.", exit_code=2) from None
    return cfg.get("train", cfg)  # a [train] table, or top-level keys


def _option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise PlumbError(f"-o {text!r}: expected KEY=VALUE, e.g. -o label_smoothing=0.1", exit_code=2)
    try:
        return key.strip(), tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return key.strip(), value  # a bare word is a string


@click.command()
@click.argument("method")
@click.option("--policy", default=None, help="Model to tune: hf:DIR or starter (default: [models] train in plumb.toml).")
@click.option("--data", "data_src", default="workspace", show_default=True,
              help="'workspace' (judged pairs / SFT answers / labels in plumb.db) or a JSONL file.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML run config ([train] table).")
@click.option("-o", "--option", "extra", multiple=True, metavar="KEY=VALUE",
              help="Any option of the method (repeatable), e.g. -o label_smoothing=0.1.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Output directory (default adapters/METHOD-TIME).")
@click.option("--steps", type=int, help="Optimizer steps (default: one epoch).")
@click.option("--batch-size", type=int, help="Pairs (or examples) per micro-batch [4].")
@click.option("--grad-accum", type=int, help="Micro-batches per optimizer step [1].")
@click.option("--lr", type=float, help="Peak learning rate [5e-5; sft/orpo 2e-4].")
@click.option("--beta", type=float, help="DPO/IPO/KTO beta, ORPO lambda [0.1].")
@click.option("--max-length", type=int, help="Max tokens of prompt + answer [1024].")
@click.option("--lora-r", type=int, help="LoRA rank [16].")
@click.option("--seed", type=int, help="Random seed [0].")
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in --out (automatic for a rerun).")
@click.option("--fresh", is_flag=True, help="Train anew even if an identical run already finished.")
@click.option("--gguf", is_flag=True, help="Also write the adapter as a GGUF LoRA for llama.cpp.")
@click.option("--eval", "eval_path", type=click.Path(dir_okay=False), help="Held-out JSONL to evaluate on.")
@click.option("--tasks", "tasks_path", type=click.Path(dir_okay=False),
              help="grpo: JSONL of tasks (prompts with answer/tests/schema/meta); default: the workspace's prompts.")
@click.option("--reward", "rewards", multiple=True, metavar="NAME[=WEIGHT]",
              help="grpo: a verifier to optimize and its weight (repeatable); reward-model:PATH for a reward model.")
@click.option("--in-process", is_flag=True, help="Train in this process instead of a child process.")
@click.option("--json", "as_json", is_flag=True, help="Print the final metrics as JSON.")
@click.pass_context
def train(ctx: click.Context, method: str, policy: str | None, data_src: str, config_path: str | None,
          extra: tuple[str, ...], out_dir: str | None, resume: bool, fresh: bool, gguf: bool,
          eval_path: str | None, tasks_path: str | None, rewards: tuple[str, ...], in_process: bool, as_json: bool,
          **flags: Any) -> None:
    """Tune a LoRA adapter with METHOD (dpo, ipo, hinge, kto, orpo, sft, or a plugin's).

    \b
    plumb train dpo                                  # workspace pairs, starter model
    plumb train dpo --data pairs.jsonl --steps 200 --eval heldout.jsonl
    plumb train sft --policy hf:./my-model --config run.toml --gguf
    plumb train dpo --out adapters/dpo-1 --resume    # after a crash
    plumb train grpo --tasks math.jsonl --reward numeric --reward length=0.2 --steps 100
    plumb train reward-model                         # then: plumb train grpo --reward reward-model:PATH
    """
    from plumb.pipeline import train as stage
    from plumb.train.distributed import world

    main = world().main  # under torchrun, rank 0 alone shows progress and the result

    config = {**_run_config(config_path), **dict(_option(o) for o in extra),
              **{k: v for k, v in flags.items() if v is not None}}
    if resume:
        config["resume"] = True
    if gguf:
        config["gguf"] = True
    opts = stage.TrainOptions(method, policy, data_src, eval_path, config, out_dir, fresh, not in_process,
                              tasks=tasks_path, rewards=list(rewards))
    with session_from(ctx, scratch_ok=data_src != "workspace" or tasks_path is not None) as session:
        stage.validate(session, opts)  # before anything loads
        with Progress(quiet=as_json or not main) as show:
            try:
                done = stage.train(session, opts, show)
            except KeyboardInterrupt:
                click.echo("interrupted; run the same command again to resume.", err=True)
                raise
    if not main:
        return
    if as_json:
        echo_json({"run_id": done.run_id, "adapter": done.adapter_dir, "metrics": done.metrics,
                   "artifacts": done.artifacts, "reused": done.skipped})
        return
    m = done.metrics
    summary = "  ".join(f"{k} {m[k]:.4f}" for k in ("loss", "rewards/accuracies", "eval/rewards/accuracies",
                                                     "eval/loss", "reward", "kl", "eval/reward", "eval/signal",
                                                     "best/step", "accuracy", "eval/accuracy") if k in m)
    click.echo(f"Adapter: {done.adapter_dir}" + (f"  (run {done.run_id}" + (", reused)" if done.skipped else ")")
                                                 if done.run_id else ""))
    for kind, path in done.artifacts[1:]:
        click.echo(f"{kind}: {path}")
    if summary:
        click.echo(summary)


def register(cli: click.Group) -> None:
    cli.add_command(train)
