"""`plumb generate`: sample answers to prompts and store them with their provenance.

Every stored sample records the model spec, the backend, the sampling
parameters, the plugin that produced it (name and version) and the hash of the
constitution the workspace is tuning toward. Prompts come from the command
line, or else from the workspace (``plumb data import``). The whole batch is
asked for at once; if that fails, each prompt is asked alone so one bad
request costs only itself: the others are stored and the failures are listed.
"""

from __future__ import annotations

import json
from typing import Any

import click

from plumb.commands import echo_json, workspace_from
from plumb.core.errors import PlumbError


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
@click.option("--json", "as_json", is_flag=True, help="Print the stored samples as JSON.")
@click.pass_context
def generate(ctx: click.Context, prompts: tuple[str, ...], model_spec: str | None, n: int,
             constitution: str | None, temperature: float, top_p: float, max_tokens: int, seed: int | None,
             stop: tuple[str, ...], split: str, as_json: bool) -> None:
    """Sample N answers per prompt and store them (PROMPTS, or the workspace's prompts)."""
    from plumb.commands.models import check_exists
    from plumb.core.models import parse_spec
    from plumb.core.records import Chat, SamplingParams
    from plumb.core.store import Provenance

    ws = workspace_from(ctx)
    spec = parse_spec(model_spec or ws.model("generate"), role="generate")
    check_exists(spec, ws.root)
    const = ws.constitution(constitution)
    params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed,
                            stop=tuple(stop))
    store = ws.store()
    store.add_constitution(const.hash, const.name, const.version, const.canonical_json())
    if prompts:
        rows = [(store.add_prompt([{"role": "user", "content": p}], source="cli"), Chat.from_user(p)) for p in prompts]
    else:
        rows = [(r["id"], Chat.from_dicts(json.loads(r["messages"]))) for r in store.prompts(split)]
        if not rows:
            raise PlumbError(f"no prompts given and the workspace has no {split!r} prompts; pass PROMPTS or "
                             "`plumb data import FILE.jsonl` first.", exit_code=2)
    pm = ws.plugin_manager()
    chats = [chat for _, chat in rows]
    try:
        answers, plugin, version = pm.generate(spec, chats, params)
        outcome: list[Any] = list(answers)
    except PlumbError as batch_error:
        if len(chats) == 1:
            raise
        outcome = []  # ask one by one: a bad prompt costs only itself
        plugin = version = "?"
        for chat in chats:
            try:
                one, plugin, version = pm.generate(spec, [chat], params)
                outcome.append(one[0])
            except PlumbError as exc:
                outcome.append(exc)
        if all(isinstance(o, PlumbError) for o in outcome):
            raise batch_error

    stored, failed = [], []
    for (prompt_id, chat), result in zip(rows, outcome):
        if isinstance(result, PlumbError):
            failed.append((prompt_id, chat.last_user, str(result)))
            continue
        for c in result:
            prov = Provenance(model=c.model or str(spec), backend=c.backend, params=params.to_dict(),
                              plugin=plugin, plugin_version=version, constitution_hash=const.hash)
            sid = store.add_sample(prompt_id, c.text, prov, finish_reason=c.finish_reason)
            stored.append({"id": sid, "prompt_id": prompt_id, "text": c.text, "finish_reason": c.finish_reason})
    store.close()

    if as_json:
        echo_json({"samples": stored, "failed": [{"prompt_id": p, "prompt": t, "error": e} for p, t, e in failed]})
    else:
        for s in stored:
            click.echo(f"[{s['prompt_id']}:{s['id']}] {s['text']}")
        click.echo(f"stored {len(stored)} samples from {spec} ({plugin} {version}), constitution {const.hash}.")
    if failed:
        for p, text, err in failed:
            click.echo(f"failed prompt {p} ({text[:50]!r}): {err}", err=True)
        raise PlumbError(f"{len(failed)} of {len(rows)} prompts failed (listed above); the other answers are stored.")


def register(cli: click.Group) -> None:
    cli.add_command(generate)
