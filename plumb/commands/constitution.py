"""`plumb constitution check|new|list|show`."""

from __future__ import annotations

from pathlib import Path

import click

from plumb.commands import echo_json


@click.group()
def constitution() -> None:
    """Write, validate and list constitutions."""


@constitution.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def check(file: str, as_json: bool) -> None:
    """Validate FILE; print a summary, or one FILE:LINE: problem per line (exit 2)."""
    from plumb.core.constitution import load_constitution

    c = load_constitution(file)
    if as_json:
        echo_json({"file": file, "name": c.name, "version": c.version, "hash": c.hash,
                   "principles": [p.id for p in c.principles]})
    else:
        click.echo(f"{file}: ok: {c.summary()}")


@constitution.command()
@click.argument("name")
@click.option("--out", "-o", type=click.Path(dir_okay=False), help="Where to write (default NAME.toml).")
def new(name: str, out: str | None) -> None:
    """Write a commented starter constitution NAME.toml."""
    from plumb.core.constitution import starter_text
    from plumb.core.errors import PlumbError

    text = starter_text(name)
    path = Path(out or f"{name}.toml")
    if path.exists():
        raise PlumbError(f"{path} already exists; choose another name or pass --out.", exit_code=2)
    path.write_text(text, encoding="utf-8")
    click.echo(f"Wrote {path}. Edit it, then: plumb constitution check {path}")


@constitution.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_(as_json: bool) -> None:
    """List the constitutions shipped with plumb."""
    from plumb.core.constitution import load_constitution, shipped

    rows = []
    for name, path in shipped().items():
        c = load_constitution(path)
        rows.append({"name": name, "path": str(path), "principles": len(c.principles),
                     "hash": c.hash, "description": c.description})
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        click.echo(f"{r['name']:<26} {r['principles']:>2} principles  {r['description']}")


@constitution.command()
@click.argument("name_or_file")
def show(name_or_file: str) -> None:
    """Print a constitution's principles."""
    from plumb.core.constitution import load_constitution, resolve

    c = load_constitution(resolve(name_or_file))
    click.echo(c.summary())
    for p in c.principles:
        checks = f"  checks: {', '.join(ch.verifier for ch in p.checks)}" if p.checks else ""
        click.echo(f"- {p.id} (weight {p.weight:g}): {p.text}{checks}")


def register(cli: click.Group) -> None:
    cli.add_command(constitution)
