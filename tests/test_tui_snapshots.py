"""Snapshots of the main screens' layout: the SVG Textual exports, compared with tests/snapshots/.

A screen that changed on purpose: rerun with PLUMB_UPDATE_SNAPSHOTS=1 and
look at the new SVG before committing it. An update never passes: a snapshot
it writes is reported as skipped ("updated ..."), and only a later run without
the variable, against the committed file, can pass. On a mismatch the new SVG
is written next to the test's temporary files for a look.

The workspace lives at a fixed path (the home screen shows it) and names its
own constitution and stand-in model files, so nothing on the screen depends
on the machine, the user cache or the shipped constitutions.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
from pathlib import Path

import pytest

from plumb.core.store import Provenance
from plumb.core.workspace import init_workspace
from plumb.tui.factory import make_app

SNAPSHOTS = Path(__file__).parent / "snapshots"
ROOT = Path("/tmp/plumb-tui-snapshots")
SIZE = (100, 30)
MINE = '''name = "mine"
version = "1"
description = "Short answers."

[[principles]]
id = "short"
text = "Answer in one sentence."

[[principles.checks]]
verifier = "max_words"
params = { n = 25 }
'''


@pytest.fixture
def ws():
    ROOT.mkdir(exist_ok=True)
    with open(ROOT.parent / "plumb-tui-snapshots.lock", "w") as lock:  # one snapshot run at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        shutil.rmtree(ROOT / "ws", ignore_errors=True)
        ws = init_workspace(ROOT / "ws", constitution="mine.toml")
        (ws.root / "mine.toml").write_text(MINE)
        (ws.root / "models" / "base.gguf").write_bytes(b"stand-in")
        (ws.root / "models" / "base-hf").mkdir()
        cfg = ws.root / "plumb.toml"
        cfg.write_text(cfg.read_text().replace('generate = "starter"', 'generate = "llamacpp:models/base.gguf"')
                       .replace('train = "starter"', 'train = "hf:models/base-hf"'))
        with ws.store() as store:
            for prompt, *answers in [("Capital of France?", "Paris.", "The capital of France is, of course, Paris."),
                                     ("2+2?", "4.", "Great question! Two plus two equals four.")]:
                pid = store.add_prompt([{"role": "user", "content": prompt}])
                for text in answers:
                    store.add_sample(pid, text, Provenance(model="llamacpp:models/base.gguf"))
        yield ws


def screenshot(ws, screen: str) -> str:
    """The SVG of ``screen`` once its workspace is read and its workers are done."""
    app = make_app(ws.root, screen)
    app.rng.seed(0)

    async def take() -> str:
        async with app.run_test(size=SIZE) as pilot:
            while app.current_mode != screen:
                await pilot.pause(0.05)
            for _ in range(2):  # workers, then what their results start (debounced validation, charts)
                await app.workers.wait_for_complete()
                await pilot.pause(0.3)
            return app.export_screenshot(title=f"plumb {screen}")

    return asyncio.run(take())


@pytest.mark.parametrize("screen", ["home", "constitution", "label", "train"])
def test_main_screens(ws, screen, tmp_path):
    svg = screenshot(ws, screen)
    path = SNAPSHOTS / f"tui-{screen}.svg"
    if os.environ.get("PLUMB_UPDATE_SNAPSHOTS") and (not path.is_file() or path.read_text(encoding="utf-8") != svg):
        path.parent.mkdir(exist_ok=True)
        path.write_text(svg, encoding="utf-8")
        pytest.skip(f"updated {path}: look at it, commit it, rerun without PLUMB_UPDATE_SNAPSHOTS to pass")
    assert path.is_file(), f"no snapshot {path}: run with PLUMB_UPDATE_SNAPSHOTS=1, look at it, commit it"
    if svg != path.read_text(encoding="utf-8"):
        (tmp_path / path.name).write_text(svg, encoding="utf-8")
        pytest.fail(f"the {screen} screen differs from {path}; the new one is {tmp_path / path.name} "
                    "(PLUMB_UPDATE_SNAPSHOTS=1 accepts it)")
