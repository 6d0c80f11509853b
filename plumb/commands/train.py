"""`plumb train dpo|ipo|hinge|kto|orpo|sft`: tune a LoRA adapter from the terminal.

Data comes from the workspace (judged pairs, SFT answers, labels) or a JSONL
file; hyperparameters from flags over an optional TOML run config (keys are
the fields of ``plumb.train.TrainConfig``). The run, its per-step metrics and
its artifacts go into the workspace store when there is one; a rich progress
bar shows loss and reward accuracy as it trains.
"""

from __future__ import annotations

import time
import tomllib
from pathlib import Path
from typing import Any

import click

from plumb.commands import echo_json, quiet_transformers, workspace_from
from plumb.commands.progress import TrainingBar
from plumb.train import METHODS

FLAG_KEYS = ("steps", "batch_size", "grad_accum", "lr", "beta", "max_length", "lora_r", "seed")


def _run_config(path: str | None) -> dict[str, Any]:
    from plumb.core.errors import PlumbError

    if not path:
        return {}
    try:
        cfg = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlumbError(f"{path}: no such run config.", exit_code=2) from None
    except tomllib.TOMLDecodeError as exc:
        raise PlumbError(f"{path}: invalid TOML: {exc}.", exit_code=2) from None
    return cfg.get("train", cfg)  # a [train] table, or top-level keys


def _rows_from_file(path: str, method: str) -> list[dict[str, Any]]:
    """JSONL rows in the shape the method trains on: the file is imported into an
    in-memory store, so files and workspaces turn into training rows by one set of rules."""
    from plumb.core.dataio import import_file
    from plumb.core.store import Store

    with Store(":memory:") as store:
        import_file(store, path)
        return _rows_from_store(store, method)


def _rows_from_store(store, method: str) -> list[dict[str, Any]]:
    if method == "kto":
        return store.labelled()
    if method == "sft":
        return store.sft_examples()
    return store.preference_pairs()


@click.command()
@click.argument("method", type=click.Choice(sorted(METHODS)))
@click.option("--policy", default=None, help="Model to tune: hf:DIR or starter (default: [models] train in plumb.toml).")
@click.option("--data", "data_src", default="workspace", show_default=True,
              help="'workspace' (judged pairs / SFT answers / labels in plumb.db) or a JSONL file.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML run config ([train] table).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Output directory (default adapters/METHOD-TIME).")
@click.option("--steps", type=int, help="Optimizer steps (default: one epoch).")
@click.option("--batch-size", type=int, help="Pairs (or examples) per micro-batch [4].")
@click.option("--grad-accum", type=int, help="Micro-batches per optimizer step [1].")
@click.option("--lr", type=float, help="Peak learning rate [5e-5; sft/orpo 2e-4].")
@click.option("--beta", type=float, help="DPO/IPO/KTO beta, ORPO lambda [0.1].")
@click.option("--max-length", type=int, help="Max tokens of prompt + answer [1024].")
@click.option("--lora-r", type=int, help="LoRA rank [16].")
@click.option("--seed", type=int, help="Random seed [0].")
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in --out.")
@click.option("--gguf", is_flag=True, help="Also write the adapter as a GGUF LoRA for llama.cpp.")
@click.option("--eval", "eval_path", type=click.Path(dir_okay=False), help="Held-out JSONL to evaluate on.")
@click.option("--json", "as_json", is_flag=True, help="Print the final metrics as JSON.")
@click.pass_context
def train(ctx: click.Context, method: str, policy: str | None, data_src: str, config_path: str | None,
          out_dir: str | None, resume: bool, gguf: bool, eval_path: str | None, as_json: bool, **flags: Any) -> None:
    """Tune a LoRA adapter with METHOD: dpo, ipo, hinge, kto, orpo or sft.

    \b
    plumb train dpo                                  # workspace pairs, starter model
    plumb train dpo --data pairs.jsonl --steps 200 --eval heldout.jsonl
    plumb train sft --policy hf:./my-model --config run.toml --gguf
    plumb train dpo --out adapters/dpo-1 --resume    # after a crash
    """
    from plumb import __version__
    from plumb.core.errors import PlumbError
    from plumb.core.events import fan_out, to_store
    from plumb.commands.models import check_exists
    from plumb.core.models import parse_spec
    from plumb.core.plugins import get_plugin_manager
    from plumb.core.records import Run
    from plumb.core.store import Provenance
    from plumb.train import TrainConfig

    try:
        ws = workspace_from(ctx)
    except PlumbError:
        if data_src == "workspace":
            raise
        ws = None  # a file run outside a workspace: nothing is stored
    config = {**_run_config(config_path), **{k: v for k, v in flags.items() if v is not None}}
    config.update({"resume": resume or bool(config.get("resume")), "gguf": gguf or bool(config.get("gguf"))})
    TrainConfig.from_dict({**config, "method": method})  # validate before loading anything
    spec = parse_spec(policy or (ws.model("train") if ws else "starter"), role="train")
    check_exists(spec, ws.root if ws else None)

    store = ws.store() if ws else None
    try:
        rows = _rows_from_store(store, method) if data_src == "workspace" else _rows_from_file(data_src, method)
        eval_rows = _rows_from_file(eval_path, "dpo") if eval_path else []
        if eval_path and not eval_rows:
            eval_rows = _rows_from_file(eval_path, "sft")
        base = ws.adapters_dir if ws else Path("adapters")
        if out_dir is None and config["resume"]:
            found = sorted(base.glob(f"{method}-*/checkpoints"), key=lambda p: p.stat().st_mtime)
            if not found:
                raise PlumbError(f"--resume: no earlier {method} run with checkpoints in {base}; pass --out DIR.",
                                 exit_code=2)
            out_dir = str(found[-1].parent)
        out = Path(out_dir) if out_dir else base / f"{method}-{time.strftime('%Y%m%d-%H%M%S')}"

        run_id = None
        if store is not None:
            run_id = store.start_run(method, {**config, "data": data_src, "policy": str(spec)}, str(out),
                                     Provenance(model=str(spec), backend=spec.backend, params=config,
                                                plugin="plumb.plugins.preference", plugin_version=__version__))
        quiet_transformers()
        bar = TrainingBar(f"train {method}", quiet=as_json)
        sinks = [bar] + ([to_store(store, run_id)] if store is not None else [])
        run = Run(method, spec, rows, str(out), config, run_id, eval_rows, fan_out(*sinks))
        pm = ws.plugin_manager() if ws else get_plugin_manager()
        try:
            with bar:
                result = pm.hook.plumb_optimize(method=method, run=run)
            if result is None:
                raise PlumbError(f"no installed plugin trains {method!r}; `plumb plugins` lists the methods.")
        except KeyboardInterrupt:
            if store is not None:
                store.finish_run(run_id, "interrupted")
            click.echo(f"interrupted; resume with: plumb train {method} --out {out} --resume", err=True)
            raise
        except Exception as exc:
            if store is not None:
                store.finish_run(run_id, "failed", str(exc))
            raise
        if store is not None:
            for kind, path in result.artifacts:
                store.add_artifact(kind, path, run_id)
            store.finish_run(run_id, "done")
    finally:
        if store is not None:
            store.close()

    if as_json:
        echo_json({"run_id": run_id, "adapter": result.adapter_dir, "metrics": result.metrics,
                   "artifacts": result.artifacts})
        return
    m = result.metrics
    summary = "  ".join(f"{k} {m[k]:.4f}" for k in ("loss", "rewards/accuracies", "eval/rewards/accuracies",
                                                     "eval/loss") if k in m)
    click.echo(f"Adapter: {result.adapter_dir}" + (f"  (run {run_id})" if run_id else ""))
    for kind, path in result.artifacts[1:]:
        click.echo(f"{kind}: {path}")
    if summary:
        click.echo(summary)


def register(cli: click.Group) -> None:
    cli.add_command(train)
