"""Fake plugins the tests install into a workspace (``plugins = ["./NAME.py"]`` in its plumb.toml), kept as
real modules so they are read, linted and searched like code. Some are broken on purpose (``broken_import``,
``raises_on_import``, ``unknown_hook``): a broken plugin must be reported, never fatal.

A test takes a plugin's source with ``plugin_source`` and writes it where the workspace loads it from; the
text is the file's, byte for byte (line numbers in reported errors match this directory's files)."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent


def plugin_source(name: str) -> str:
    return (HERE / name).read_text(encoding="utf-8")
