"""Builtin verifiers for checkable answers, weights, `plumb verify`, and verifier failures."""

from __future__ import annotations

import json
import time

import pytest

from plumb.cli import cli
from plumb.core.plugins import get_plugin_manager
from plumb.core.records import Chat, Completion, Task
from plumb.core.rewards import combine, parse_weights, score, validate_weights
from tests.plugins import plugin_source


@pytest.fixture(scope="module")
def pm():
    return get_plugin_manager(entry_points=False)


def _scores(pm, task, text) -> dict[str, float]:
    return {r.name: r.value for r in score(pm, [task], [Completion(text, "m", "b")])[0]}


@pytest.mark.parametrize("text, want", [
    ("Let me think. 6 times 7 is 42.\n#### 42", 1.0),
    ("The answer is \\boxed{42}.", 1.0),
    ("\\boxed{\\frac{1}{2}} then \\boxed{42}", 1.0),
    ("#### 42.0", 1.0),
    ("#### 41", 0.0),
    ("no number here", 0.0),
])
def test_numeric_answers_in_gsm8k_and_boxed_forms(pm, text, want):
    assert _scores(pm, Task(Chat(()), answer="42"), text)["numeric"] == want


def test_exact_is_normalised_and_numbers_parse_commas_fractions_percent(pm):
    task = Task(Chat(()), answer="Paris")
    assert _scores(pm, task, "  paris. ") == {"exact": 1.0}  # numeric does not apply to a word
    assert _scores(pm, Task(Chat(()), answer="1000"), "#### 1,000")["numeric"] == 1.0
    assert _scores(pm, Task(Chat(()), answer="0.75"), "It is 3/4")["numeric"] == 1.0
    assert _scores(pm, Task(Chat(()), answer="0.5"), "#### 50%")["numeric"] == 1.0


def test_format_schema_and_length(pm):
    assert _scores(pm, Task(Chat(()), meta={"regex": r"^\d{3}-\d{4}$"}), "555-1234") == {"format": 1.0}
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    task = Task(Chat(()), schema=schema)
    assert _scores(pm, task, '```json\n{"n": 3}\n```') == {"json-schema": 1.0}
    bad = score(pm, [task] * 2, [Completion('{"n": "x"}', "m", "b"), Completion("{n:", "m", "b")])
    assert [r[0].value for r in bad] == [0.0, 0.0]
    assert "invalid at n" in bad[0][0].detail and "not JSON" in bad[1][0].detail
    length = Task(Chat(()), meta={"max_words": 4})
    assert _scores(pm, length, "one two three")["length"] == 1.0
    assert _scores(pm, length, "one two three four five six")["length"] == pytest.approx(0.5)
    assert _scores(pm, length, " ".join(["w"] * 9))["length"] == 0.0


def test_garbage_and_huge_completions_score_zero_without_raising(pm):
    task = Task(Chat(()), answer="42", schema={"type": "object"}, meta={"regex": "x", "max_words": 3})
    for text in ("\x00\xff\ufffd" * 1000, "word " * 10_000_000):  # binary garbage, a 50 MB answer
        start = time.perf_counter()
        rewards = score(pm, [task], [Completion(text, "m", "b")])[0]
        assert {r.status for r in rewards} == {"ok"} and time.perf_counter() - start < 30
        assert {r.name: r.value for r in rewards}["exact"] == 0.0


@pytest.mark.parametrize("text", ["\\text{" * 150_000, "```\n" * 250_000, "```json " * 120_000,
                                  "1," * 500_000, "\\boxed{" * 140_000, "Great question! " * 60_000])
def test_adversarial_megabyte_answers_are_parsed_in_linear_time(pm, text):
    """Every parse of model text in the answer and style verifiers is linear: ~1 MB built to make a
    backtracking regex rescan the rest at every position scores in well under a second of parsing
    (Python's regex engine holds the GIL, so the verifier timeout could not cut it short)."""
    task = Task(Chat(()), answer="42", schema={"type": "object"})
    check = Task(Chat(()), meta={"check": {"verifier": "starts_with_answer", "params": {}}})
    start = time.perf_counter()
    rewards = score(pm, [task, check], [Completion(text, "m", "b")] * 2)
    assert all(r.status == "ok" for row in rewards for r in row)
    assert time.perf_counter() - start < 5  # quadratic parsing took minutes at this size


def test_weights_combine_and_a_missing_verifier_is_refused_before_work(pm):
    from plumb.core.errors import PlumbError
    from plumb.core.records import Reward

    weights = parse_weights(["numeric=2", "length"])
    assert weights == {"numeric": 2.0, "length": 1.0}
    assert combine([Reward("numeric", 1.0), Reward("length", 0.5), Reward("exact", 1.0)], weights) == 2.5
    assert combine([Reward("numeric", 1.0, status="timeout")], weights) == 0.0
    validate_weights(pm, weights)
    with pytest.raises(PlumbError, match="no installed plugin offers the verifier 'unit_test'"):
        validate_weights(pm, {"unit_test": 1.0})
    with pytest.raises(PlumbError, match="weight must be a number"):
        parse_weights(["numeric=lots"])


HANGS = plugin_source("hangs.py")


def test_a_hanging_verifier_times_out_and_the_rest_go_on(tmp_path, monkeypatch):
    from plumb.core.plugins import get_plugin_manager as load

    (tmp_path / "hangs.py").write_text(HANGS)
    monkeypatch.setenv("PLUMB_VERIFIER_TIMEOUT", "1")
    plugins = load([str(tmp_path / "hangs.py")], entry_points=False)
    start = time.perf_counter()
    rows = score(plugins, [Task(Chat(()))] * 3, [Completion(t, "m", "b") for t in ("ok", "hang", "fine")])
    assert time.perf_counter() - start < 10
    hangs = [next(r for r in row if r.name == "hangs") for row in rows]
    assert [(r.value, r.status) for r in hangs] == [(1.0, "ok"), (0.0, "timeout"), (1.0, "ok")]
    assert "did not finish in 1s" in hangs[1].detail


def test_plumb_verify_command(tmp_path, runner):
    task = tmp_path / "task.json"
    task.write_text(json.dumps({"prompt": "6*7?", "answer": "42"}))
    done = tmp_path / "c.txt"
    done.write_text("#### 42")
    res = runner.invoke(cli, ["verify", "--task", str(task), "--completion", str(done), "--json"])
    assert res.exit_code == 0, res.output
    assert {(r["verifier"], r["value"], r["status"]) for r in json.loads(res.stdout)} == {
        ("exact", 1.0, "ok"), ("numeric", 1.0, "ok")}
    bad = tmp_path / "bad.json"
    bad.write_text('{"prompt": "x",\n "answer": 4,}')
    res = runner.invoke(cli, ["verify", "--task", str(bad), "--completion", str(done)])
    assert res.exit_code == 2 and f"{bad}:2: invalid JSON" in res.stderr


TESTS = "from solution import add\n\ndef test_small():\n    assert add(2, 3) == 5\n\ndef test_negative():\n    assert add(-1, 1) == 0\n"


def test_unit_tests_verifier_scores_the_fraction_passed_in_the_sandbox(pm):
    task = Task(Chat(()), tests=TESTS)
    cases = {
        "```python\ndef add(a, b):\n    return a + b\n```": (1.0, "ok"),
        "def add(a, b):\n    return abs(a) + b": (0.5, "ok"),
        "no code here at all, just words": (0.0, "ok"),
    }
    rows = score(pm, [task] * len(cases), [Completion(t, "m", "b") for t in cases])
    got = [next((r.value, r.status) for r in row if r.name == "unit-tests") for row in rows]
    assert got == list(cases.values())
    broken = score(pm, [Task(Chat(()), tests="def test_x(:\n")], [Completion("def add(a, b): pass", "m", "b")])[0]
    unit = next(r for r in broken if r.name == "unit-tests")
    assert unit.status == "error" and unit.detail.startswith("task error")
    slow = Task(Chat(()), tests=TESTS, meta={"wall_seconds": 1, "cpu_seconds": 1})
    loop = score(pm, [slow], [Completion("def add(a, b):\n    while True: pass", "m", "b")])[0]
    assert [(r.value, r.status) for r in loop if r.name == "unit-tests"] in ([(0.0, "timeout")], [(0.0, "ok")])


def test_the_example_verifier_plugin_works_everywhere(workspace, runner, tmp_path):
    import shutil
    from pathlib import Path

    shutil.copy(Path(__file__).resolve().parents[1] / "examples" / "typed_code.py", workspace.root)
    cfg = (workspace.root / "plumb.toml").read_text().replace("plugins = []", 'plugins = ["./typed_code.py"]')
    (workspace.root / "plumb.toml").write_text(cfg)
    listing = json.loads(runner.invoke(cli, ["plugins", "--json"]).stdout)
    assert any(v["name"] == "typed-code" and v["plugin"] == "typed_code" for v in listing["verifiers"])
    task = tmp_path / "task.json"
    task.write_text(json.dumps({"prompt": "Write add.", "tests": TESTS}))
    done = tmp_path / "c.txt"
    done.write_text("```python\ndef add(a: int, b: int) -> int:\n    return a + b\n\ndef helper(x):\n    return x\n```")
    res = runner.invoke(cli, ["verify", "--task", str(task), "--completion", str(done), "--json"])
    assert res.exit_code == 0, res.output
    by = {r["verifier"]: r for r in json.loads(res.stdout)}
    assert by["typed-code"]["value"] == 0.5 and "missing: helper" in by["typed-code"]["detail"]
    assert by["unit-tests"]["value"] == 1.0
    # and as a constitution check
    mine = workspace.root / "typed.toml"
    mine.write_text('name = "typed"\nversion = "1"\ndescription = "d"\n[[principles]]\nid = "types"\n'
                    'text = "Annotate every function."\n[[principles.checks]]\nverifier = "typed-code"\n')
    from plumb.core.records import Completion as C
    from plumb.core.rewards import check_completions
    from plumb.pipeline.session import open_session

    with open_session(workspace.root) as session:
        const = session.constitution(str(mine))
        results = check_completions(session.pm, const, [C(done.read_text(), "m", "b")])
    assert [(pid, r.name, r.value) for pid, r in results[0]] == [("types", "typed-code", 0.5)]
