"""`plumb tui` in a real terminal (tmux): label a few pairs, SIGKILL the app, every label is in the database."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

from plumb.core.store import Provenance
from plumb.core.workspace import init_workspace

PROMPTS = ["Capital of France?", "Two plus two?", "Colour of the sky?", "Boiling point of water?"]


def _tmux() -> str:
    """The tmux binary, installed with apt-get when missing and possible (CI runs as root)."""
    found = shutil.which("tmux")
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "install", "-y", "-q", "tmux"], ["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "tmux"]):
            subprocess.run(cmd, env=env, capture_output=True, timeout=600)
            found = shutil.which("tmux")
            if found:
                break
    if found is None:
        pytest.skip("tmux is not installed and apt-get cannot install it here (not root, or no apt-get)")
    return found


class Pane:
    """One tmux session on a private server socket, running a command in a 120x40 terminal."""

    def __init__(self, command: str) -> None:
        self.tmux = _tmux()
        self.socket = f"plumb-test-{os.getpid()}"
        self.name = "tui"
        self._run("new-session", "-d", "-s", self.name, "-x", "120", "-y", "40", command)

    def _run(self, *args: str) -> str:
        out = subprocess.run([self.tmux, "-L", self.socket, *args], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def screen(self) -> str:
        return self._run("capture-pane", "-p", "-t", self.name)

    def keys(self, *keys: str) -> None:
        self._run("send-keys", "-t", self.name, *keys)

    def pid(self) -> int:
        return int(self._run("display-message", "-p", "-t", self.name, "#{pane_pid}").strip())

    def wait_for(self, text: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            shown = self.screen()
            if text in shown:
                return shown
            time.sleep(0.1)
        raise AssertionError(f"{text!r} never appeared; the terminal shows:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run([self.tmux, "-L", self.socket, "kill-server"], capture_output=True, timeout=30)


def _left_and_right(shown: str, answers: list[str]) -> tuple[str, str]:
    """Which two answers the pane shows, left one first (by the column each starts at)."""
    found = {}
    for line in shown.splitlines():
        for answer in answers:
            if answer in line:
                found[answer] = line.index(answer)
    assert len(found) == 2, shown
    left, right = sorted(found, key=found.get)
    return left, right


def test_labels_pressed_in_a_real_terminal_survive_a_sigkill(tmp_path):
    ws = init_workspace(tmp_path / "ws")
    answers = []
    with ws.store() as store:
        for i, prompt in enumerate(PROMPTS):
            pid = store.add_prompt([{"role": "user", "content": prompt}])
            for side in ("short", "long"):
                answers.append(f"{side} answer number {i}")
                store.add_sample(pid, answers[-1], Provenance(model="m"))
    command = f"exec {shlex.quote(sys.executable)} -m plumb tui {shlex.quote(str(ws.root))} --screen label"
    pane = Pane(f"cd {shlex.quote(os.getcwd())} && {command}")
    try:
        pane.wait_for("pairs to label")
        expected = []
        for n, key in enumerate(("a", "b", "t", "a"), start=1):
            left, right = _left_and_right(pane.screen(), answers)
            expected.append({"a": left, "b": right, "t": "tie"}[key])
            pane.keys(key)
            pane.wait_for(f"{n} labelled here")
        os.kill(pane.pid(), signal.SIGKILL)
    finally:
        pane.close()
    with ws.store() as store:
        rows = store.query("SELECT * FROM judgments WHERE source = 'human' ORDER BY id")
        chosen = []
        for r in rows:
            winner = {"a": r["a_id"], "b": r["b_id"]}.get(r["winner"])
            chosen.append("tie" if winner is None else store.one("SELECT text FROM samples WHERE id = ?",
                                                                 (winner,))["text"])
    assert chosen == expected
