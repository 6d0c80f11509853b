"""The import contracts in pyproject.toml ([tool.importlinter]) hold: imports run downward through the layers
of DESIGN.md, no plugin imports another, the faces never import a plugin, and no sibling modules import each
other in a circle. Lazy imports inside functions count."""

from __future__ import annotations

import contextlib
import io
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NOT_CODE = {"__init__", "__main__", "data"}  # the version, `python -m plumb`, bundled JSONL


def contracts() -> list[dict]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_the_import_contracts_hold(monkeypatch):
    lint = pytest.importorskip("importlinter.cli", reason="pip install import-linter (the dev extra)")
    monkeypatch.chdir(REPO)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = lint.lint_imports(config_filename=str(REPO / "pyproject.toml"), no_cache=True, no_logo=True)
    assert code == 0, out.getvalue()
    assert f"{len(contracts())} kept, 0 broken" in out.getvalue()


def test_every_package_sits_in_a_layer():
    """A new top-level module or package must be placed in the layers, or nothing would check it."""
    (layers,) = [c["layers"] for c in contracts() if c["type"] == "layers"]
    placed = {m.strip() for layer in layers for m in layer.replace("|", ":").split(":")}
    present = {f"plumb.{p.stem}" for p in (REPO / "plumb").iterdir()
               if (p.suffix == ".py" or (p / "__init__.py").is_file()) and p.stem not in NOT_CODE}
    assert present - placed == set(), "place these in [tool.importlinter] layers in pyproject.toml"
