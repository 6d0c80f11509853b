"""Constitutions: shipped ones valid, content hash, FILE:LINE errors, starter file."""

from __future__ import annotations

import json

import pytest

from plumb.cli import cli
from plumb.core.constitution import load_constitution, parse_constitution, shipped
from plumb.core.errors import ValidationFailed

MIN = """
name = "t"
version = "1"
description = "d"

[[principles]]
id = "one"
text = "Be brief."
"""


def test_five_shipped_constitutions_are_valid():
    found = shipped()
    expected = {"helpful-honest-harmless", "concise-writer", "patient-tutor", "code-reviewer", "personal-voice"}
    assert expected <= set(found)
    for name, path in found.items():
        c = load_constitution(path)
        assert c.name == name
        assert len(c.principles) >= 3


def test_concise_writer_says_what_the_issue_asks():
    c = load_constitution(shipped()["concise-writer"])
    texts = " ".join(p.text.lower() for p in c.principles)
    assert "conclusion" in texts and "adjective" in texts
    assert any(p.checks for p in c.principles)


def test_hash_changes_with_principles_not_with_comments():
    base = parse_constitution(MIN)
    commented = parse_constitution("# a comment\n" + MIN.replace('text = "Be brief."', 'text = "Be brief."  # why'))
    assert commented.hash == base.hash
    assert parse_constitution(MIN.replace("Be brief.", "Be brief!")).hash != base.hash
    assert parse_constitution(MIN + '\n[[principles]]\nid = "two"\ntext = "x"\n').hash != base.hash
    assert parse_constitution(MIN.replace('text = "Be brief."', 'text = "Be brief."\nweight = 2.0')).hash != base.hash


BAD_CASES = [
    ('name = "t\n', 1, "invalid TOML"),
    (MIN.replace('version = "1"\n', ""), 1, "missing required field 'version'"),
    (MIN.replace('version = "1"', "version = 1"), 3, "version: Input should be a valid string"),
    (MIN + '\n[[principles]]\nid = "one"\ntext = "again"\n', 11, "duplicate principle id 'one'"),
    (MIN.replace('text = "Be brief."', 'text = "   "'), 8, "principle text is empty"),
    (MIN.replace('description = "d"', 'description = "d"\ncolour = "red"'), 5, "unknown key 'colour'"),
    (MIN.replace('text = "Be brief."', 'text = "Be brief."\ntagz = ["x"]'), 9, "unknown key 'principles[0].tagz'"),
    (MIN.replace('text = "Be brief."', 'text = "Be brief."\nweight = "heavy"'), 9, "weight"),
    (MIN.replace('[[principles]]\nid = "one"\ntext = "Be brief."', ""), 1, "missing required field 'principles'"),
]


@pytest.mark.parametrize("text,line,message", BAD_CASES)
def test_bad_constitution_reports_file_line_message(tmp_path, runner, text, line, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    result = runner.invoke(cli, ["constitution", "check", str(path)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert f"{path}:{line}: " in result.stderr
    assert message in result.stderr
    for problem in result.stderr.strip().splitlines():
        assert problem.startswith(f"{path}:"), problem


def test_every_problem_reported_at_once(tmp_path):
    text = MIN.replace('version = "1"', "version = 1") + '\n[[principles]]\nid = "one"\ntext = ""\n'
    with pytest.raises(ValidationFailed) as exc:
        parse_constitution(text, "c.toml")
    assert len(exc.value.problems) == 3


def test_unreadable_and_missing_files(tmp_path, runner):
    result = runner.invoke(cli, ["constitution", "check", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2 and "no such constitution file" in result.stderr
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    result = runner.invoke(cli, ["constitution", "check", str(binary)])
    assert result.exit_code == 2 and f"{binary}:1:" in result.stderr and "Traceback" not in result.output


def test_check_ok_summary(runner):
    path = shipped()["patient-tutor"]
    result = runner.invoke(cli, ["constitution", "check", str(path)])
    assert result.exit_code == 0
    assert result.stdout.count("\n") == 1 and "ok" in result.stdout


def test_new_writes_a_valid_commented_starter(tmp_path, runner, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(cli, ["constitution", "new", "my-voice"])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "my-voice.toml").read_text()
    assert text.count("#") > 5
    assert load_constitution(tmp_path / "my-voice.toml").name == "my-voice"
    again = runner.invoke(cli, ["constitution", "new", "my-voice"])
    assert again.exit_code == 2 and "already exists" in again.stderr
    assert (tmp_path / "my-voice.toml").read_text() == text


def test_list_json(runner):
    result = runner.invoke(cli, ["constitution", "list", "--json"])
    assert result.exit_code == 0
    names = {row["name"] for row in json.loads(result.stdout)}
    assert "patient-tutor" in names and len(names) >= 5
