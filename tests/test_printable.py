"""Model text shown to a person has its control characters escaped (CLI and TUI); --json keeps it exact."""

from __future__ import annotations

import json

from plumb.cli import cli
from plumb.core.text import printable
from tests.plugins import plugin_source

HOSTILE = "Paris\x1b[2J\x1b[H score 1.0\rok\x9b31m\x07"
SHOWN = "Paris\\x1b[2J\\x1b[H score 1.0\\rok\\x9b31m\\x07"

PLUGIN = plugin_source("hostile.py")


def _use_plugin(root) -> None:
    (root / "hostile.py").write_text(PLUGIN)
    cfg = root / "plumb.toml"
    cfg.write_text(cfg.read_text().replace("plugins = []", 'plugins = ["./hostile.py"]'))


def _raw_controls(text: str) -> set[str]:
    return {c for c in text if (ord(c) < 32 and c not in "\n\t") or 0x7f <= ord(c) <= 0x9f}


def test_printable_escapes_controls_and_keeps_the_rest():
    assert printable(HOSTILE) == SHOWN
    assert printable("tabs\tand\nlines, ünïcode ✓ [b]x[/b] \\x1b") == "tabs\tand\nlines, ünïcode ✓ [b]x[/b] \\x1b"
    assert printable("\x00\x08\x0b\x0c\x7f") == "\\0\\b\\v\\f\\x7f"


def test_verify_prints_a_quoted_answer_escaped_and_json_keeps_it(workspace, runner, tmp_path):
    _use_plugin(workspace.root)
    task, done = tmp_path / "task.json", tmp_path / "c.txt"
    task.write_text(json.dumps({"prompt": "Capital of France?"}))
    done.write_bytes(HOSTILE.encode())
    res = runner.invoke(cli, ["verify", "--task", str(task), "--completion", str(done)])
    assert res.exit_code == 0, res.output
    assert f"quote           0.500  ok      the answer was {SHOWN}" in res.stdout
    assert not _raw_controls(res.stdout)
    res = runner.invoke(cli, ["verify", "--task", str(task), "--completion", str(done), "--json"])
    assert [r["detail"] for r in json.loads(res.stdout) if r["verifier"] == "quote"] == [f"the answer was {HOSTILE}"]


def test_generate_prints_answers_escaped_and_json_keeps_them(workspace, runner):
    _use_plugin(workspace.root)
    res = runner.invoke(cli, ["generate", "--model", "hostile:x", "Capital of France?"])
    assert res.exit_code == 0, res.output
    assert f"] {SHOWN}\n" in res.stdout and not _raw_controls(res.output)
    res = runner.invoke(cli, ["generate", "--model", "hostile:x", "--again", "--json", "Capital of France?"])
    assert [s["text"] for s in json.loads(res.stdout)["samples"]] == [HOSTILE]


def test_the_tui_shows_a_hostile_answer_escaped(workspace):
    """The label screen (its AnswerPair is the compare screen's too) and the generate screen's log."""
    from textual.widgets import Input, RichLog

    from plumb.core.store import Provenance
    from plumb.tui.factory import make_app
    from plumb.tui.widgets.answer_pair import AnswerPair
    from tests.test_tui import run, until

    _use_plugin(workspace.root)
    with workspace.store() as store:
        pid = store.add_prompt([{"role": "user", "content": "Capital\x1b[31m of France?"}], split="train")
        for text in (HOSTILE, "Paris."):
            store.add_sample(pid, text, Provenance(model="m", backend="b"))

    def shown(widget) -> str:
        return "".join(seg.text for strip in widget.render_lines(widget.region.reset_offset) for seg in strip)

    app = make_app(workspace.root, "label")

    async def label(pilot):
        pair = app.screen.query_one(AnswerPair)
        await until(pilot, lambda: any(pair.texts), what="the pair")
        assert SHOWN in pair.texts
        rendered = "".join(shown(w) for w in pair.query("Static"))
        assert "Capital\\x1b[31m of France?" in rendered and "\\x1b[2J" in rendered
        assert not _raw_controls(rendered)

    run(app, label)
    app = make_app(workspace.root, "generate")

    async def generate(pilot):
        app.screen.query_one("#model", Input).value = "hostile:x"
        await pilot.press("ctrl+r")
        log = app.screen.query_one("#gen-log", RichLog)
        await until(pilot, lambda: any("score 1.0" in s.text for s in log.lines), what="the samples")
        lines = "".join(s.text for s in log.lines)
        assert SHOWN[:30] in lines and not _raw_controls(lines)

    run(app, generate)


def test_label_shows_the_pair_escaped(workspace, runner):
    from plumb.core.store import Provenance

    with workspace.store() as store:
        pid = store.add_prompt([{"role": "user", "content": "Capital\x1b[31m of France?"}], split="train")
        for text in (HOSTILE, "Paris."):
            store.add_sample(pid, text, Provenance(model="m", backend="b"))
    res = runner.invoke(cli, ["label"], input="q\n")
    assert res.exit_code == 0, res.output
    assert "Capital\\x1b[31m of France?" in res.output and SHOWN in res.output
    assert not _raw_controls(res.output)
