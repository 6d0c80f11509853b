"""`plumb label`: your own A/B preferences in the terminal (pipeline.label).

Keys: a (A is better), b (B is better), t (tie), s (skip), u (undo the last
label), q (quit). On a terminal one key is enough; from a pipe, one letter per
line. Each label is committed the moment it is given.
"""

from __future__ import annotations

import shutil
import sys
import textwrap

import click

from plumb.commands import session_from
from plumb.core.text import printable

KEYS = {"a": "first", "b": "second", "t": "tie"}


def _read_key() -> str:
    if sys.stdin.isatty():
        return click.getchar().lower()
    line = sys.stdin.readline()
    return line.strip().lower()[:1] if line else "q"


def _show(pair, n: int, total: int) -> None:
    width = min(100, shutil.get_terminal_size().columns)
    click.echo(click.style(f"\n[{n}/{total}] ", bold=True) + printable(pair.prompt))
    for name, text in (("A", pair.first), ("B", pair.second)):
        click.echo(click.style(f"--- {name} ---", fg="cyan"))
        click.echo("\n".join(textwrap.fill(p, width) for p in printable(text).split("\n")))
    click.echo("a / b better, t tie, s skip, u undo, q quit: ", nl=False)


@click.command()
@click.option("--split", default="train", show_default=True)
@click.option("--seed", default=0, show_default=True, help="Seed of the display order.")
@click.pass_context
def label(ctx: click.Context, split: str, seed: int) -> None:
    """Label pairs of answers yourself: the pairs the AI judge was unsure of come first."""
    from plumb.pipeline.label import queue, record, undo

    with session_from(ctx) as session:
        const = session.constitution()
        pairs = queue(session.store, split, seed)
        if not pairs:
            click.echo("No pairs to label: sample two answers per prompt first (plumb generate -n 2).")
            return
        done: list[tuple[int, int]] = []  # (position in the queue, judgment id)
        i = 0
        while i < len(pairs):
            _show(pairs[i], i + 1, len(pairs))
            key = _read_key()
            click.echo(key)
            if key in KEYS:
                done.append((i, record(session.store, pairs[i], KEYS[key], const.hash)))
                i += 1
            elif key == "s":
                i += 1
            elif key == "u" and done:
                i, judgment = done.pop()
                undo(session.store, judgment)
                click.echo("undone.")
            elif key == "q":
                break
        click.echo(f"\n{len(done)} labels stored. `plumb judge agreement` compares them with the AI judge.")


def register(cli: click.Group) -> None:
    cli.add_command(label)
