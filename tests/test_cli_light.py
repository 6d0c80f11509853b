"""`plumb --help` and `plumb plugins` must not import the heavy libraries."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "transformers", "peft", "llama_cpp")

PROBE = """
import json, sys
sys.argv = ["plumb", *json.loads(sys.argv[1])]
from plumb.cli import main
try:
    main()
except SystemExit:
    pass
heavy = [m for m in ("torch", "transformers", "peft", "llama_cpp") if m in sys.modules]
print("HEAVY=" + json.dumps(heavy))
"""


def _heavy_after(args: list[str], cwd) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(args)], capture_output=True, text=True, cwd=cwd, timeout=120
    )
    line = [l for l in out.stdout.splitlines() if l.startswith("HEAVY=")]
    assert line, out.stdout + out.stderr
    return json.loads(line[-1][len("HEAVY="):])


def test_help_is_light(tmp_path):
    assert _heavy_after(["--help"], tmp_path) == []


def test_plugins_is_light(tmp_path):
    assert _heavy_after(["plugins"], tmp_path) == []
    assert _heavy_after(["plugins", "--json"], tmp_path) == []


def test_import_cli_is_light():
    out = subprocess.run(
        [sys.executable, "-c", "import sys, plumb.cli; print([m for m in %r if m in sys.modules])" % (HEAVY,)],
        capture_output=True, text=True, timeout=60,
    )
    assert out.stdout.strip() == "[]", out.stderr
