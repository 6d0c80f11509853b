"""`plumb quickstart`: the first main job (pipeline.quickstart), with a live view in the terminal."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click


def show_summary(summary) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="Held-out prompts: base vs tuned (greedy)", show_lines=True, expand=True)
    table.add_column("prompt", ratio=2)
    table.add_column("base", ratio=4)
    table.add_column("tuned", ratio=4)
    for row in summary.rows:
        base_words, tuned_words = len(row.base.split()), len(row.tuned.split())
        table.add_row(row.prompt, f"{row.base}\n[dim]({base_words} words)[/]",
                      f"{row.tuned}\n[dim]({tuned_words} words)[/]")
    console.print(table)
    m = summary.final_metrics
    console.print(
        f"[bold]mean words base {summary.mean_words_base} vs tuned {summary.mean_words_tuned}; "
        f"{summary.changed}/{summary.compared} answers changed; constitution checks passed "
        f"{summary.checks_base:.0%} base vs {summary.checks_tuned:.0%} tuned[/]"
    )
    console.print(
        f"trained {summary.steps} steps on {summary.pairs} pairs: final loss {m.get('loss', float('nan')):.4f}, "
        f"reward accuracy {m.get('rewards/accuracies', float('nan')):.2f}; stage seconds "
        + ", ".join(f"{k} {v:g}" for k, v in summary.seconds.items())
    )
    console.print(f"adapter: {summary.adapter_gguf}\nworkspace: {summary.workspace} (run {summary.run_id})")


@click.command()
@click.argument("directory", default="quickstart", type=click.Path(file_okay=False))
@click.option("--pairs", type=int, help="Use the first N bundled pairs (default: all).")
@click.option("--prompts", type=int, help="Compare on the first N held-out prompts (default: all).")
@click.option("--steps", type=int, help="Optimizer steps (default: one pass over the pairs).")
@click.option("--lr", type=float, default=1e-4, show_default=True, help="LoRA learning rate.")
@click.option("--max-new-tokens", type=int, default=120, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def quickstart(directory: str, pairs, prompts, steps, lr, max_new_tokens, as_json) -> None:
    """Tune the starter model toward a concise, answer-first style and compare.

    Pulls SmolLM2-135M-Instruct once, imports the bundled preference pairs into
    the workspace DIRECTORY (default ./quickstart), trains a DPO LoRA adapter,
    serves it on the starter GGUF in llama.cpp, and prints base and tuned
    answers to held-out prompts side by side.
    """
    from plumb.commands.progress import Progress
    from plumb.pipeline.quickstart import Options, run

    opts = Options(directory=Path(directory), pairs=pairs, prompts=prompts, steps=steps, lr=lr,
                   max_new_tokens=max_new_tokens)
    with Progress() as show:
        summary = run(opts, show)
    if as_json:
        click.echo(json.dumps(asdict(summary), indent=2))
    else:
        show_summary(summary)


def register(cli: click.Group) -> None:
    cli.add_command(quickstart)
