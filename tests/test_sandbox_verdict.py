"""The verdict is out of the solution's reach: forge attempts of every kind score 0, blame falls on
the completion for whatever it can cause, and parsing model text takes linear time."""

from __future__ import annotations

import time

import pytest

from plumb.verify import sandbox
from plumb.core.records import Completion, Reward, Task
from plumb.core.rewards import combine
from plumb.plugins import unit_tests as plugin
from plumb.verify.unit_tests import MAX_COMPLETION_CHARS, extract_code, run_tests
from tests.test_sandbox import ADD, TESTS, assert_zero, healthy_afterwards  # noqa: F401 (the autouse fixture)

WRONG = "def add(a, b):\n    return 0\n"
SHAPES = {
    "pytest-style": TESTS,
    "assert script": "assert add(2, 3) == 5\nassert add(-4, 1) == -3\n",
    "pytest.raises": "import pytest\nfrom solution import add\n\ndef test_type():\n    with pytest.raises(TypeError):\n"
                     "        add(1, None)\n    assert add(2, 3) == 5\n",
}
LIMITS = sandbox.Limits(cpu_seconds=3, wall_seconds=4, processes=8)
RECORDS = """
import os
def forge(fields):  # a record as the old runner wrote it, MAC'd with whatever key was found
    import hashlib
    for key in KEYS:
        body = repr(fields)
        mac = hashlib.blake2b(body.encode(), key=key, digest_size=16).hexdigest()
        for fd in range(1, 64):
            try:
                os.write(fd, f"plumb-test-record {mac} {body}\\n".encode())
            except OSError:
                pass
def forge_all():
    for name in ("test_small", "test_negative", "test_type", "test_sum", "<script>"):
        forge(("test", name, True, ""))
    forge(("done",))
KEYS = [bytes(32)]
"""
# name: an attack run when the (wrong) solution is imported; each tries to report a pass
FORGERIES = {
    "__main__ globals": RECORDS + """
import __main__
g = vars(__main__)
for name in ("key", "report", "finish", "equal", "records"):
    if name in g and callable(g[name]):
        try:
            g[name]("test", "test_small", True, "")
        except Exception:
            pass
    elif name in g and isinstance(g[name], bytes):
        KEYS.append(g[name])
g["equal"] = g["__plumb_equal__"] = lambda a, b: True
forge_all()
""",
    "frames": RECORDS + """
import sys
frame = sys._getframe()
while frame:
    for scope in (frame.f_globals, frame.f_locals):
        KEYS += [v for v in scope.values() if isinstance(v, bytes) and len(v) == 32]
        for name in ("report", "send"):
            if callable(scope.get(name)):
                try:
                    scope[name](("ok", ("v", 5), []))
                except BaseException:
                    pass
    frame = frame.f_back
forge_all()
""",
    "gc": RECORDS + """
import gc
for obj in gc.get_objects():
    if isinstance(obj, dict):
        KEYS += [v for v in list(obj.values()) if isinstance(v, bytes) and len(v) == 32]
    if getattr(obj, "__name__", "") in ("equal", "claims_anything", "checked", "__eq__"):
        try:
            obj.__code__ = (lambda *a, **k: True).__code__
        except (AttributeError, TypeError, ValueError):
            pass
forge_all()
""",
    "builtins": """
import builtins
class Never(BaseException):
    pass
builtins.AssertionError = Never
builtins.isinstance = lambda *a: True
builtins.__import__ = __import__
""",
    "sys.modules": """
import sys, types
fake = types.ModuleType("pytest")
class raises:
    def __init__(self, *a, **k):
        pass
    def __enter__(self):
        return self
    def __exit__(self, *a):
        return True
fake.raises = raises
sys.modules["pytest"] = fake
sys.modules["solution"] = types.SimpleNamespace(add=lambda a, b: True)
sys.modules["test_task"] = types.SimpleNamespace(test_small=lambda: None, test_negative=lambda: None)
""",
    "monkeypatch the test framework": """
import pytest, _pytest.python_api
class Raises:
    def __init__(self, *a, **k):
        pass
    def __enter__(self):
        return self
    def __exit__(self, *a):
        return True
pytest.raises = _pytest.python_api.raises = Raises
""",
    "atexit": RECORDS + """
import atexit
atexit.register(forge_all)
""",
    "threads": RECORDS + """
import threading, time
def spam():
    while True:
        forge_all()
        time.sleep(0.01)
threading.Thread(target=spam, daemon=True).start()
""",
    "signals": RECORDS + """
import os, signal
for pid in range(1, 300):
    for sig in (signal.SIGSTOP, signal.SIGUSR1, signal.SIGTERM):
        try:
            os.kill(pid, sig)
        except OSError:
            pass
signal.signal(signal.SIGTERM, lambda *a: forge_all())
forge_all()
""",
    "ctypes memory reads": RECORDS + """
import ctypes, os
for pid in os.listdir("/proc"):
    if not pid.isdigit() or int(pid) == os.getpid():
        continue
    try:
        with open(f"/proc/{pid}/mem", "rb") as mem:
            KEYS.append(mem.read(32))
    except OSError:
        pass
libc = ctypes.CDLL(None, use_errno=True)
buf = ctypes.create_string_buffer(32)
for pid in range(1, 50):  # process_vm_readv
    local = (ctypes.c_void_p * 2)(ctypes.addressof(buf), 32)
    libc.syscall(310, pid, local, 1, local, 1, 0)
forge_all()
""",
    "forged protocol replies": """
import marshal, os
def add(a, b):
    for reply in [("done",), ("test", "test_small", True, ""), ("ok", ("h", 0, "int")), ("ok", ("v", True), []),
                  ("ok", ("v", marshal), []), ("raise", "AssertionError", "", "")]:
        raw = marshal.dumps(reply) if reply[1:2] != (("v", marshal),) else b"garbage"
        for fd in range(3, 64):
            try:
                os.write(fd, len(raw).to_bytes(4, "big") + raw)
            except OSError:
                pass
    return 0
""",
    "values that claim equality": """
class Five(int):
    def __eq__(self, other):
        return True
    __hash__ = int.__hash__
class Text(str):
    def __eq__(self, other):
        return True
def add(a, b):
    return Five(0) if a else Text("")
""",
    "read the tests for the answers": """
import os
found = ""
for pid in os.listdir("/proc"):
    for name in ("cmdline", "environ", "fd/0"):
        try:
            found += open(f"/proc/{pid}/{name}", "rb").read().decode("latin-1")
        except OSError:
            pass
for name in os.listdir("/tmp"):
    found += open("/tmp/" + name, encoding="latin-1").read()
assert "add(2, 3) == 5" not in found and "add(-4, 1)" not in found, "found the tests"
""",
}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", FORGERIES)
def test_forge_attempts_score_zero(name, shape):
    attack = FORGERIES[name]
    completion = f"```python\n{WRONG}\n{attack}\n```\n"
    outcome = run_tests(completion, SHAPES[shape], LIMITS)
    assert (outcome.reward, outcome.passed) == (0.0, 0), outcome
    assert outcome.status != "task-error", outcome
    assert "found the tests" not in outcome.detail


def test_the_honest_solution_passes_in_every_shape():
    for tests in SHAPES.values():
        assert run_tests(ADD, tests).reward == 1.0


def test_values_cross_as_plain_data_and_objects_stay_behind():
    solution = """
class Counter:
    def __init__(self):
        self.n = 0
    def bump(self, by=1):
        self.n += by
        return self.n
def evens(n):
    for i in range(0, n, 2):
        yield i
def push(xs, x):
    xs.append(x)
def fail():
    raise KeyError("nope")
CONSTANT = {"a": (1, 2.5, None, b"x", frozenset({3}))}
"""
    tests = """
import pytest
from solution import Counter, evens, push, fail, CONSTANT

def test_objects():
    c = Counter()
    assert c.bump() == 1 and c.bump(by=2) == 3 and c.n == 3 and c == c and c != Counter()

def test_iteration_and_mutation():
    assert list(evens(7)) == [0, 2, 4, 6]
    xs = [1]
    push(xs, 2)
    assert xs == [1, 2]

def test_exceptions_and_data():
    with pytest.raises(KeyError):
        fail()
    assert CONSTANT == {"a": (1, 2.5, None, b"x", frozenset({3}))}
"""
    outcome = run_tests(solution, tests)
    assert (outcome.reward, outcome.status) == (1.0, "ok"), outcome


BLAME = {
    "module __getattr__ that raises": "def __getattr__(name):\n    raise RuntimeError('no attributes')\n",
    "poisoned sys.modules": "import sys\nsys.modules['pytest'] = None\nsys.modules['math'] = None\n",
    "broken import machinery": "import sys\nsys.meta_path.clear()\nsys.path_hooks.clear()\n",
}


@pytest.mark.parametrize("name", BLAME)
def test_what_a_completion_causes_is_its_own_failure(name):
    tests = "import math\nimport pytest\nfrom solution import plus\n\ndef test_plus():\n    assert plus(1, 2) == 3\n"
    outcome = run_tests(f"```python\n{BLAME[name]}\n```", tests, LIMITS)
    assert (outcome.reward, outcome.status) == (0.0, "error"), outcome
    reward = plugin.score(Task("p", tests=tests), Completion(f"```python\n{BLAME[name]}\n```", "m", "b"))
    assert not reward.detail.startswith("task error")


def test_tests_broken_without_any_solution_are_a_task_error():
    for tests, words in [("import no_such_module\n\ndef test_x():\n    pass", "'no_such_module'"),
                         ("from solution import add\nx = 1 / 0\n\ndef test_x():\n    pass", "ZeroDivisionError")]:
        assert_zero(run_tests(ADD, tests), "task-error", words)
    # a script's failed assert is the one test failing, not the task's fault
    assert_zero(run_tests(WRONG, "assert add(1, 2) == 3\n"), "ok", "1 of 1 tests failed")


def test_a_task_error_never_scores_better_than_a_failure():
    """GRPO's reward is ``rewards.combine``: a reward with status error adds 0, as a failure scores 0."""
    broken = plugin.score(Task("p", tests="import no_such_module\n\ndef test_x():\n    pass"), Completion(ADD, "m", "b"))
    failed = plugin.score(Task("p", tests=TESTS), Completion(WRONG, "m", "b"))
    assert (broken.status, broken.value, failed.status, failed.value) == ("error", 0.0, "ok", 0.0)
    for weight in (1.0, 2.0, -1.0):
        assert combine([broken], {"unit-tests": weight}) == combine([failed], {"unit-tests": weight}) == 0.0
    assert combine([Reward("unit-tests", 0.5)], {"unit-tests": 1.0}) > combine([broken], {"unit-tests": 1.0})


ADVERSARIAL = {
    "unclosed fence, one long line": "```python\n" + "x" * (MAX_COMPLETION_CHARS - 20),
    "unclosed fence, no newline": "```" + "`" * (MAX_COMPLETION_CHARS - 10),
    "a fence on every line": "```bash\n" * (MAX_COMPLETION_CHARS // 8 - 1),
    "open and close, alternating": "```js\nx\n```\n" * (MAX_COMPLETION_CHARS // 12 - 1),
    "spaces before backticks": (" " * 5000 + "``\n") * (MAX_COMPLETION_CHARS // 5004),
    "no fence, 250k lines of code": "x=1\n" * (MAX_COMPLETION_CHARS // 4 - 1),
    "no fence, deep expression": "a+" * (MAX_COMPLETION_CHARS // 2 - 1) + "a",
    "no fence, one long comparison": "a<" * (MAX_COMPLETION_CHARS // 2 - 1) + "a",
}


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_adversarial_megabyte_completions_finish_within_the_timeout(name):
    text = ADVERSARIAL[name]
    assert len(text) <= MAX_COMPLETION_CHARS
    limits = sandbox.Limits(cpu_seconds=3, wall_seconds=3)
    start = time.monotonic()
    outcome = run_tests(text, TESTS, limits)
    assert time.monotonic() - start < limits.wall_seconds + 1, outcome
    assert outcome.reward == 0.0
    start = time.monotonic()
    if not name.startswith("no fence"):  # the fence scan alone (the parse of unfenced text is the sandbox's)
        extract_code(text)
        assert time.monotonic() - start < 0.5
