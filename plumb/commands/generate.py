"""`plumb generate`: sample answers to prompts and store them with their provenance (pipeline.sample)."""

from __future__ import annotations

import click

from plumb.commands import echo_json, session_from
from plumb.core.errors import PlumbError
from plumb.core.text import printable


@click.command()
@click.argument("prompts", nargs=-1)
@click.option("--model", "-m", "model_spec", help="Model spec (default: [models] generate in plumb.toml).")
@click.option("--n", "-n", default=1, show_default=True, type=click.IntRange(1), help="Samples per prompt.")
@click.option("--constitution", "-c", help="Constitution these samples are made under (default: the workspace's).")
@click.option("--temperature", default=0.8, show_default=True, type=click.FloatRange(0))
@click.option("--top-p", default=0.95, show_default=True, type=click.FloatRange(0, 1))
@click.option("--max-tokens", default=256, show_default=True, type=click.IntRange(1))
@click.option("--seed", type=int, help="Seed for reproducible sampling (backends that support it).")
@click.option("--stop", multiple=True, help="Stop string (repeatable).")
@click.option("--split", default="train", show_default=True, help="Workspace prompts to use when none are given.")
@click.option("--again", is_flag=True, help="Sample anew where this model already answered with these settings.")
@click.option("--json", "as_json", is_flag=True, help="Print the stored samples as JSON.")
@click.pass_context
def generate(ctx: click.Context, prompts: tuple[str, ...], model_spec: str | None, n: int,
             constitution: str | None, temperature: float, top_p: float, max_tokens: int, seed: int | None,
             stop: tuple[str, ...], split: str, again: bool, as_json: bool) -> None:
    """Sample N answers per prompt and store them (PROMPTS, or the workspace's prompts).

    A rerun with the same model and settings only makes the samples still missing
    (after an interruption, say); --again samples anew. Answers are printed with their control
    characters escaped; --json keeps the exact text.
    """
    from plumb.commands.progress import Progress
    from plumb.core.records import SamplingParams
    from plumb.pipeline.sample import SampleOptions, sample

    params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed,
                            stop=tuple(stop))
    opts = SampleOptions(model=model_spec, prompts=list(prompts), split=split, params=params,
                         constitution=constitution, again=again)
    with session_from(ctx) as session, Progress(quiet=as_json) as show:
        out = sample(session, opts, show)

    if as_json:
        echo_json({"samples": out.stored, "reused": out.reused,
                   "failed": [{"prompt_id": p, "prompt": t, "error": e} for p, t, e in out.failed]})
    else:
        for s in out.stored:
            click.echo(printable(f"[{s['prompt_id']}:{s['id']}] {s['text']}"))
        reused = f" ({out.reused} already there)" if out.reused else ""
        click.echo(f"stored {len(out.stored)} samples{reused} from {out.spec} ({out.plugin} {out.version}), "
                   f"constitution {out.constitution_hash}.")
    if out.failed:
        for p, text, err in out.failed:
            click.echo(printable(f"failed prompt {p} ({text[:50]!r}): {err}"), err=True)
        raise PlumbError(f"{len(out.failed)} of {out.prompts} prompts failed (listed above); the other answers are stored.")


def register(cli: click.Group) -> None:
    cli.add_command(generate)
