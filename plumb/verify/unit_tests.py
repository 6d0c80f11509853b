"""Score a completion's code against a task's Python tests, run in the sandbox.

A task's tests are either pytest-style module-level functions ``test_*`` that
import from ``solution`` (no fixtures, parametrize or test classes; ``pytest``
itself may be imported, e.g. for ``pytest.raises``), or a script of asserts,
which counts as one test that passes if the script runs to its end (the
solution's names are already defined in it); they can import what plumb's
own Python can. ``run_tests`` takes the completion's code (``extract_code``:
the first fenced Python block, else the whole text if it parses as Python),
writes it as ``solution.py`` in a fresh sandbox (``plumb.verify.sandbox``) and runs
the tests there, one after the other (see below for how). Finding the code is
one linear pass over the lines; whether unfenced text is Python is decided in
the sandbox, so no completion up to the cap can hold plumb's GIL past the timeout.

The outcome's status says what happened: ``ok`` (the tests ran; reward =
passed / total, or 1/0 with ``all_or_nothing``), ``timeout``, ``error`` (the
completion is at fault: no code, too large, it does not import, it crashed or
exited before the tests finished, broke a sandbox limit or left processes
running) and ``task-error`` (the tests themselves do not compile, need
fixtures, or fail at import for a reason other than the solution: the task's
fault, to report apart from the model's scores). Every status but ``ok``
scores 0 and says why in ``reason``; failure output is kept in ``detail``,
truncated. When the sandbox cannot be set up, ``run_tests`` raises
``SandboxUnavailable`` rather than run the code unprotected.

What the code under test cannot fake
------------------------------------
Two processes in the sandbox: the judge (``judge.py``) runs the tests and decides each verdict;
the solution (``solution_server.py``) runs in a pid namespace nested in the judge's, so it cannot
see, signal, trace or read the judge, and it never holds the key or the tests. The judge never
imports the solution: the tests' ``solution`` is a stand-in whose functions send their arguments
over a pipe and get back plain data (numbers, strings, bytes, None, lists, tuples, dicts, sets)
or a handle to an object left on the solution's side (a handle equals only itself). Every
comparison, ``assert`` and ``pytest.raises`` runs in the judge, on data. The judge's records
carry a keyed BLAKE2 MAC (key random per run, on the judge's stdin) on its own stdout, which
nothing else holds. So patching ``__main__``, frames, ``gc``, builtins, ``sys.modules`` or pytest,
``atexit``, threads, signals, reading memory, printing or writing records, forging protocol
replies, exiting early and values whose ``__eq__`` always says yes all score 0
(``tests/test_sandbox_verdict.py``).

The limit, as measured: the solution decides only the values it returns (and what it raises).
It can still hard-code answers for the calls it sees, or special-case inputs: what the tests
check is all the judge knows. Arguments must be plain data or the solution's own objects (a
lambda or a class of the tests' cannot cross), a solution's own exception classes cannot be
named in ``pytest.raises``, and its objects compare by identity.

Blame: a task error only when the tests do not compile or have an unsupported shape, or fail
at import the same way against a stub solution (no completion involved); anything else is
the completion's failure and scores 0 as such.
"""

from __future__ import annotations

import ast
import hashlib
import hmac
import marshal
import os
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from plumb.verify import sandbox

MAX_COMPLETION_CHARS = 1_000_000
DETAIL_CHARS = 4000
_TESTS_FILE = sandbox.WORKDIR + "/test_task.py"
_RECORD = "plumb-test-record"
_SCRIPT = "<script>"  # the one test of a script of asserts
_SHAPES = {"done": (), "solution-error": (str,), "task-error": (str,), "gone": (str,), "test": (str, bool, str)}  # the runner's records


@dataclass
class TestOutcome:
    __test__ = False  # not a pytest test class

    status: Literal["ok", "timeout", "error", "task-error"]
    passed: int
    total: int
    reward: float
    reason: str  # one line; empty when every test passed
    detail: str  # failure output, truncated to DETAIL_CHARS
    seconds: float


def extract_code(text: str) -> str | None:
    """The first ```python (or ```py, or bare ```) fenced block, else the whole text if it parses as Python."""
    code, fenced = _code_of(text)
    if fenced or code is None:
        return code
    try:
        ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # ValueError: NUL bytes
        return None
    return code


def _code_of(text: str) -> tuple[str | None, bool]:
    """(the first Python fenced block, True), else (the whole text, False) unless it is blank. One
    pass over the lines, in linear time: a regex or a parse of model text here would hold the GIL
    for as long as the text makes it (whether the text is Python is decided inside the sandbox)."""
    pos, n = 0, len(text)
    while (end := text.find("\n", pos)) >= 0:  # an opening fence is a whole line
        opening = text[pos:end].lstrip(" \t")
        pos = end + 1
        if not opening.startswith("```"):
            continue
        info = opening[3:].lstrip(" \t")
        length = next((i for i, c in enumerate(info) if not (c.isalnum() or c in "_+-")), len(info))
        start = stop = pos
        while stop < n:  # the block ends before a line that starts with ```, or at the end
            line_end = text.find("\n", stop)
            line_end = n if line_end < 0 else line_end
            if text[stop:line_end].lstrip(" \t").startswith("```"):
                break
            stop = line_end + 1
        stop = min(stop, n)
        if info[:length].lower() in ("", "python", "py", "python3"):
            return text[start:stop], True
        pos = text.find("\n", stop) + 1 if stop < n else n
        if pos == 0:
            break
    return (text, False) if text.strip() else (None, False)


def run_tests(
    completion: str, tests: str, limits: sandbox.Limits = sandbox.Limits(), all_or_nothing: bool = False
) -> TestOutcome:
    """Run ``tests`` against the completion's code in the sandbox; see the module docstring."""
    start = time.monotonic()

    def outcome(status, reason, passed=0, total=1, detail=""):
        reward = (float(passed == total) if all_or_nothing else passed / total) if status == "ok" else 0.0
        return TestOutcome(status, passed, total, reward, reason, _truncate(detail), time.monotonic() - start)

    prepared = _prepare(tests)
    if isinstance(prepared, str):
        return outcome("task-error", prepared)
    names, code = prepared
    total = len(names) or 1
    if len(completion) > MAX_COMPLETION_CHARS:
        too_large = f"the completion is too large ({len(completion)} characters, at most {MAX_COMPLETION_CHARS})"
        return outcome("error", too_large, total=total)
    solution, fenced = _code_of(completion)
    if solution is None:
        return outcome("error", "no Python code in the completion", total=total)
    key = secrets.token_bytes(32)
    importable = os.pathsep.join(p for p in map(sandbox.path_inside, filter(None, sys.path)) if p)
    judge = [sys.executable, "-I", "-S", "-c", _JUDGE, importable, *names]
    server = [sys.executable, "-I", "-S", "-c", _SERVER, importable]
    given = key + marshal.dumps((code, names, tests, _TESTS_FILE))
    result = sandbox.run(judge, {"solution.py": solution}, limits, stdin=given, peer=server)
    records = _records(result.stdout, key)
    verdicts: dict[str, list[bool]] = {}
    failures = []
    for record in records:
        if record[0] == "test":
            verdicts.setdefault(record[1], []).append(record[2])
            failures += [f"{record[1]} failed:\n{record[3]}"] if not record[2] else []
    passed = sum(all(verdicts.get(name, [False])) for name in names or [_SCRIPT])
    errors = {record[0]: record[1] for record in records if record[0] in ("task-error", "solution-error", "gone")}
    output = [f"output:\n{result.stderr}"] if result.stderr.strip() else []
    detail = "\n".join(failures + list(errors.values()) + output)
    if "task-error" in errors:
        return outcome("task-error", f"the tests fail at import: {_last_line(errors['task-error'])}", 0, total, detail)
    if "solution-error" in errors:
        why = _last_line(errors["solution-error"])
        if not fenced and why.startswith(("SyntaxError", "ValueError: source code", "IndentationError")):
            return outcome("error", "no Python code in the completion", 0, total, detail)
        return outcome("error", f"the solution does not import: {why}", 0, total, detail)
    if result.status != "ok":
        return outcome("timeout" if result.status == "timeout" else "error", result.reason, passed, total, detail)
    if "gone" in errors or ("done",) not in records:
        ended = f"the run ended (exit code {result.returncode}) before the tests finished"
        if "gone" in errors:
            ended = f"{errors['gone']} before the tests finished"
        return outcome("error", ended, passed, total, detail)
    if result.leftover:
        left = f"the code left {result.leftover} process(es) running after it ended (killed)"
        return outcome("error", left, passed, total, detail)
    return outcome("ok", "" if passed == total else f"{total - passed} of {total} tests failed", passed, total, detail)


def _prepare(tests: str) -> tuple[list[str], bytes] | str:
    """The test functions' names and the compiled tests (marshal), or why the tests are broken."""
    try:
        tree = ast.parse(tests, _TESTS_FILE)
        names: list[str] = []
        for node in tree.body:
            if isinstance(node, ast.AsyncFunctionDef) and node.name.startswith("test"):
                return f"{node.name} is async (not supported)"
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test") and node.name not in names:
                args = node.args
                if len(args.posonlyargs) + len(args.args) > len(args.defaults) or None in args.kw_defaults:
                    return f"{node.name} takes arguments (pytest fixtures and parametrize are not supported)"
                names.append(node.name)
        if not tree.body:
            return "the tests are empty"
        code = compile(ast.fix_missing_locations(_EqualityChecks().visit(tree)), _TESTS_FILE, "exec")
    except (SyntaxError, ValueError) as exc:
        return f"the tests do not compile: {exc}"
    return names, marshal.dumps(code)


class _EqualityChecks(ast.NodeTransformer):
    """``assert a == b`` becomes ``assert __plumb_equal__(a, b)`` (the judge's check, which says what differed)."""

    def visit_Assert(self, node: ast.Assert) -> ast.Assert:
        test = node.test
        if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq):
            call = ast.Call(ast.Name("__plumb_equal__", ast.Load()), [test.left, test.comparators[0]], [])
            node.test = ast.copy_location(call, test)
        return node


def _records(stdout: str, key: bytes) -> list[tuple]:
    """The runner's well-formed records whose MAC checks out; every other line is ignored."""
    records = []
    for line in stdout.split("\n"):
        mark, _, rest = line.partition(" ")
        mac, _, body = rest.partition(" ")
        if mark != _RECORD:
            continue
        expected = hashlib.blake2b(body.encode(), key=key, digest_size=16).hexdigest().encode()
        if hmac.compare_digest(mac.encode(), expected):
            try:
                record = ast.literal_eval(body)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                continue
            well_typed = isinstance(record, tuple) and record and isinstance(record[0], str)
            shape = _SHAPES.get(record[0]) if well_typed else None
            if shape is not None and len(record) == 1 + len(shape) and all(map(isinstance, record[1:], shape)):
                records.append(record)
    return records


def _last_line(text: str) -> str:
    return next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "")


def _truncate(text: str) -> str:
    return text if len(text) <= DETAIL_CHARS else text[:DETAIL_CHARS] + "\n... (truncated)"


_JUDGE = (Path(__file__).parent / "judge.py").read_text()  # run as -c source inside the sandbox
_SERVER = (Path(__file__).parent / "solution_server.py").read_text()
