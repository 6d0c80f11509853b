"""JSONL import/export: the ecosystem's shapes in, all-or-nothing on bad files, round trips out."""

from __future__ import annotations

import json

from plumb.cli import cli
from plumb.pipeline.pairs import export_rows


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = [
    {"prompt": "What is 2+2?", "answer": "4"},
    {"prompt": "Add one.", "tests": "assert f(1) == 2"},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello."}]},
    {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Great question! It is Paris!"},
    {"prompt": [{"role": "user", "content": "Boil an egg?"}],
     "chosen": [{"role": "assistant", "content": "Nine minutes."}],
     "rejected": [{"role": "assistant", "content": "Well, eggs are wonderful..."}]},
    {"prompt": "Sky colour?", "completion": "Blue.", "label": True},
    {"prompt": "Sky colour?", "completion": "Let me tell you a story about skies...", "label": False},
]


def test_import_every_shape_then_export(workspace, runner, tmp_path):
    src = _write(tmp_path / "in.jsonl", GOOD)
    result = runner.invoke(cli, ["data", "import", str(src), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"preference": 2, "unpaired": 2, "chat": 1, "prompt": 2}

    with workspace.store() as store:
        tasks = {r["text"]: r["task"] for r in store.prompts()}
        assert json.loads(tasks["What is 2+2?"]) == {"answer": "4"}
        dpo = export_rows(store, "dpo")
        assert [r["chosen"][0]["content"] for r in dpo] == ["Paris.", "Nine minutes."]
        assert dpo[0]["prompt"] == [{"role": "user", "content": "Capital of France?"}]
        sft = export_rows(store, "sft")
        assert {r["messages"][-1]["content"] for r in sft} == {"Hello.", "Paris.", "Nine minutes.", "Blue."}
        assert sft[0]["messages"][0]["role"] in ("system", "user")
        kto = export_rows(store, "kto")
        assert sum(r["label"] for r in kto) == 3 and len(kto) == 6

    out = tmp_path / "dpo.jsonl"
    result = runner.invoke(cli, ["data", "export", "--format", "dpo", str(out)])
    assert result.exit_code == 0, result.output
    # The export re-imports into a fresh workspace as the same pairs.
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert len(rows) == 2 and rows[1]["rejected"][0]["content"] == "Well, eggs are wonderful..."


def test_bad_file_imports_nothing_and_names_every_bad_line(workspace, runner, tmp_path):
    good = _write(tmp_path / "good.jsonl", GOOD[:2])
    assert runner.invoke(cli, ["data", "import", str(good)]).exit_code == 0
    with workspace.store() as store:
        before = store.counts()
    bad = _write(tmp_path / "bad.jsonl", [
        GOOD[3],
        '{"prompt": "unterminated',
        {"prompt": "x", "chosen": "same", "rejected": "same"},
        {"prompt": "x", "completion": "y", "label": "yes"},
        {"question": "wrong key"},
        GOOD[5],
        {"messages": [{"role": "robot", "content": "beep"}]},
        "[1, 2]",
        {"prompt": "", "answer": "4"},
    ])
    result = runner.invoke(cli, ["data", "import", str(bad)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    lines = [l for l in result.stderr.splitlines() if l.startswith(f"{bad}:")]
    assert [int(l.split(":")[1]) for l in lines] == [2, 3, 4, 5, 7, 8, 9]
    assert "invalid JSON" in lines[0] and "same text" in lines[1] and "true or false" in lines[2]
    assert "unrecognised line" in lines[3] and "'robot'" in lines[4]
    assert "nothing imported" in result.stderr
    with workspace.store() as store:
        assert store.counts() == before


def test_missing_file_and_missing_workspace(tmp_path, runner, monkeypatch, workspace):
    result = runner.invoke(cli, ["data", "import", str(tmp_path / "nope.jsonl")])
    assert result.exit_code == 2 and "no such file" in result.stderr
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(cli, ["data", "stats"])
    assert result.exit_code == 1
    assert "no plumb workspace here" in result.stderr and "plumb init" in result.stderr


def test_not_utf8_and_empty(workspace, runner, tmp_path):
    raw = tmp_path / "latin1.jsonl"
    raw.write_bytes(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')
    result = runner.invoke(cli, ["data", "import", str(raw)])
    assert result.exit_code == 2 and f"{raw}:2: not UTF-8" in result.stderr
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    result = runner.invoke(cli, ["data", "import", str(empty)])
    assert result.exit_code == 2 and "no records" in result.stderr


def test_workspace_option_and_bad_plumb_toml(tmp_path, runner):
    assert runner.invoke(cli, ["init", str(tmp_path / "w")]).exit_code == 0
    result = runner.invoke(cli, ["-w", str(tmp_path / "w"), "data", "stats", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["prompts"] == 0
    (tmp_path / "w" / "plumb.toml").write_text("plugins = [\n")
    result = runner.invoke(cli, ["-w", str(tmp_path / "w"), "data", "stats"])
    assert result.exit_code == 2 and "invalid TOML" in result.stderr
    assert (tmp_path / "w" / "plumb.db").exists()
