"""The sandbox and the unit-test verifier against hostile completions.

Each hostile completion also solves the task (add two numbers) and must be
contained and score 0 with a reason; honest code scores 1. After every test
the machine must be as before: no process left over from a run, no file
written by one, no file descriptor leaked by plumb.
"""

from __future__ import annotations

import gc
import marshal
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

from plumb.verify import sandbox
from plumb.verify.unit_tests import extract_code, run_tests

TESTS = """
from solution import add


def test_small():
    assert add(2, 3) == 5


def test_negative():
    assert add(-4, 1) == -3
"""
ADD = "def add(a, b):\n    return a + b\n"
QUICK = sandbox.Limits(cpu_seconds=2, wall_seconds=5)
REPO = Path(__file__).resolve().parents[1]
# The sandbox's root holds this Python's directories read-only and nothing else of the host: the checkout is
# there (read-only) only when the venv lies inside it and outside /tmp (a Python under /tmp is bound elsewhere).
# Either way a write to it is refused; what the error says depends on that layout.
_SEEN = Path(sys.prefix).resolve().is_relative_to(REPO) and not str(Path(sys.prefix).resolve()).startswith("/tmp/")
OUTSIDE_REFUSED = "Read-only file system" if _SEEN else "No such file or directory"
SECRET = "sk-plumb-test-3f9a1c"


def hostile(attack: str) -> str:
    """A completion that solves the task and runs ``attack`` when imported."""
    return f"Here you go:\n```python\n{ADD}\n{attack}\n```\n"


def assert_zero(outcome, status: str, reason: str) -> None:
    assert (outcome.reward, outcome.status) == (0.0, status), outcome
    assert reason in outcome.reason, outcome


def _processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, uid, command line) of every process on the machine."""
    found = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            uid = int(Path(f"/proc/{entry}/status").read_text().split("\nUid:")[1].split()[0])
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        found[int(entry)] = (int(stat.rsplit(")", 1)[1].split()[1]), uid, cmdline)
    return found


def _descendants(pid: int, processes: dict) -> set[int]:
    children = {p for p, (ppid, _, _) in processes.items() if ppid == pid}
    return children.union(*(_descendants(c, processes) for c in children))


def _sandbox_files() -> set[str]:
    """Files in the host's shared temp dirs that a run could have left: owned by a sandbox uid, or ours."""
    found = set()
    for folder in ("/tmp", "/var/tmp", "/dev/shm"):
        for entry in os.scandir(folder):
            owner = entry.stat(follow_symlinks=False).st_uid
            if sandbox._UIDS[0] <= owner < sandbox._UIDS[1] or "pwned" in entry.name:
                found.add(entry.path)
    return found


@pytest.fixture(autouse=True)
def healthy_afterwards():
    gc.collect()  # files and sockets earlier tests dropped are closed now, not during this test
    before, fds, files = _processes(), len(os.listdir("/proc/self/fd")), _sandbox_files()
    yield
    gc.collect()
    after = _processes()
    assert _descendants(os.getpid(), after) <= _descendants(os.getpid(), before), "a run left a process behind"
    strays = [cmd for _, uid, cmd in after.values() if sandbox._UIDS[0] <= uid < sandbox._UIDS[1] or "4242" in cmd]
    assert not strays, strays
    assert len(os.listdir("/proc/self/fd")) == fds, "file descriptors leaked"
    assert _sandbox_files() <= files, "a run left files behind"


# -- the sandbox itself ---------------------------------------------------


def test_every_protection_holds_here():
    assert sandbox.protections() == {name: True for name in sandbox.PROTECTIONS}


def test_runs_in_a_private_dir_with_files_stdin_and_a_scrubbed_environment(monkeypatch):
    monkeypatch.setenv("FOO_API_KEY", SECRET)
    monkeypatch.setenv("GITHUB_TOKEN", SECRET)
    code = "import os, sys; print(os.getcwd(), sorted(os.listdir()), sys.stdin.read(), dict(os.environ)); sys.exit(3)"
    result = sandbox.run([sys.executable, "-I", "-c", code], {"a.txt": "A", "b.bin": b"\0"}, QUICK, stdin=b"hello")
    assert (result.status, result.returncode) == ("ok", 3)
    assert result.stdout.startswith("/tmp ['a.txt', 'b.bin'] hello {")
    assert SECRET not in result.stdout and "FOO_API_KEY" not in result.stdout


def test_sees_only_its_own_processes_and_devices_and_no_home_or_host_tmp(tmp_path):
    (tmp_path / "netrc").write_text(SECRET)
    code = f"""
import os
print(sorted(p for p in os.listdir('/proc') if p.isdigit()), os.listdir('/run'), sorted(os.listdir('/dev')))
for path in [{str(tmp_path / 'netrc')!r}, os.path.expanduser('~root/.bash_history'), '/root/.ssh/id_rsa']:
    try:
        print(open(path).read())
    except OSError as exc:
        print(type(exc).__name__)
"""
    result = sandbox.run([sys.executable, "-I", "-c", code], {}, QUICK)
    devices = ["fd", "full", "null", "random", "stderr", "stdin", "stdout", "urandom", "zero"]
    assert result.stdout.splitlines()[0] == f"['1', '2'] [] {devices}", result
    assert SECRET not in result.stdout and result.stdout.count("Error") == 3


def test_writes_land_nowhere_but_its_own_tmp():
    targets = ["/tmp/pwned", str(REPO / "pwned"), "/var/tmp/pwned", "/dev/shm/pwned", "/root/pwned", "/etc/pwned"]
    code = f"""
for path in {targets!r}:
    try:
        open(path, 'w').write('x')
        print('wrote', path)
    except OSError as exc:
        print('refused', path, exc.strerror)
"""
    result = sandbox.run([sys.executable, "-I", "-c", code], {}, QUICK)
    assert result.stdout.startswith("wrote /tmp/pwned\n")  # its own private /tmp
    assert result.stdout.count("refused") == len(targets) - 1, result.stdout
    assert not any(os.path.exists(path) for path in targets)


def test_no_network_not_even_to_localhost():
    name = f"\0plumb-sandbox-test-{os.getpid()}".encode()
    with socket.socket() as listener, socket.socket(socket.AF_UNIX) as abstract:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        abstract.bind(name)
        abstract.listen()
        code = f"""
import socket
for family, address in [(socket.AF_INET, ('127.0.0.1', {listener.getsockname()[1]})), (socket.AF_UNIX, {name!r})]:
    try:
        socket.socket(family).connect(address)
        print('connected')
    except OSError as exc:
        print(exc.strerror)
"""
        result = sandbox.run([sys.executable, "-I", "-c", code], {}, QUICK)
        assert "connected" not in result.stdout and result.stdout.count("\n") == 2, result
        for server in (listener, abstract):
            server.settimeout(0.2)
            with pytest.raises(socket.timeout):
                server.accept()


def test_seccomp_refuses_namespaces_and_ptrace_but_not_threads():
    code = """
import ctypes, threading
libc = ctypes.CDLL(None, use_errno=True)
threading.Thread(target=print, args=('thread',)).start()
print(libc.unshare(0x10000000), ctypes.get_errno())  # CLONE_NEWUSER, allowed to anyone outside
print(libc.ptrace(0, 0, 0, 0), ctypes.get_errno())  # PTRACE_TRACEME, likewise
"""
    result = sandbox.run([sys.executable, "-I", "-c", code], {}, QUICK)
    assert result.stdout == "thread\n-1 1\n-1 1\n", result


def test_timeout_kills_everything_it_started_even_a_daemon():
    code = """
import os, time
if os.fork() == 0:
    os.setsid()
    os.execv('/bin/sleep', ['sleep', '4242'])
time.sleep(60)
"""
    start = time.monotonic()
    result = sandbox.run([sys.executable, "-I", "-c", code], {}, sandbox.Limits(wall_seconds=1))
    assert result.status == "timeout" and "wall-clock" in result.reason
    assert time.monotonic() - start < 3


def test_process_cpu_memory_and_file_limits():
    limits = sandbox.Limits(cpu_seconds=1, wall_seconds=5, processes=6, memory_mb=256, file_mb=1)
    fork = """
import os, time
n = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(3)
            os._exit(0)
        n += 1
except OSError:
    print(n)
"""
    forks = sandbox.run([sys.executable, "-I", "-c", fork], {}, limits)
    assert 0 < int(forks.stdout) < 6 and forks.leftover == int(forks.stdout)
    spin = sandbox.run([sys.executable, "-I", "-c", "while True: pass"], {}, limits)
    assert spin.status == "killed" and "CPU time" in spin.reason
    memory = sandbox.run([sys.executable, "-I", "-c", "b = bytearray(300 << 20)"], {}, limits)
    assert memory.returncode == 1 and "MemoryError" in memory.stderr
    big = sandbox.run([sys.executable, "-I", "-c", "open('f', 'wb').write(bytes(2 << 20))"], {}, limits)
    assert big.returncode == 1 and "File too large" in big.stderr


def test_output_is_capped_and_the_flood_stopped():
    start = time.monotonic()
    result = sandbox.run([sys.executable, "-I", "-c", "while True: print('x' * 1000)"], {}, QUICK)
    assert result.status == "killed" and result.truncated and "output limit" in result.reason
    assert len(result.stdout) == QUICK.output_bytes and time.monotonic() - start < 3


def test_network_true_shares_the_hosts_network():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        code = f"import socket; socket.create_connection(('127.0.0.1', {port})); print('connected')"
        result = sandbox.run([sys.executable, "-I", "-c", code], {}, sandbox.Limits(network=True))
        assert result.stdout == "connected\n"
        listener.accept()[0].close()


def test_protections_name_what_is_missing(monkeypatch):
    monkeypatch.setattr(sandbox.shutil, "which", lambda *a, **k: None)
    found = sandbox.protections.__wrapped__()
    assert found["namespaces"] == "unshare (util-linux) is not installed"
    assert set(found.values()) == {"unshare (util-linux) is not installed", "needs namespaces"}


def test_refuses_without_running_anything_when_a_protection_is_missing(monkeypatch):
    available = dict.fromkeys(sandbox.PROTECTIONS, True) | {"network": "no network namespaces"}
    monkeypatch.setattr(sandbox, "protections", lambda: available)
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("the sandbox started a process"))
    with pytest.raises(sandbox.SandboxUnavailable, match="network: no network namespaces"):
        sandbox.run([sys.executable, "-c", "pass"])
    with pytest.raises(sandbox.SandboxUnavailable):
        run_tests(ADD, TESTS)


@pytest.mark.parametrize("breakage", ["filesystem", "ipc", "network", "syscalls"])
def test_fails_closed_when_a_step_fails_at_run_time(monkeypatch, breakage):
    config = sandbox._config([sys.executable, "-I", "-c", "print('RAN')"], {}, QUICK)
    if breakage == "filesystem":
        config["binds"].append(("/no/such/dir", "/no/such/dir"))
    elif breakage == "ipc":
        config["ipc"]["kernel/no_such_setting"] = "1"
    elif breakage == "network":  # unshare is not asked for a network namespace, the init is told it was
        config["cut_network"] = False
        dumps = marshal.dumps
        monkeypatch.setattr(sandbox, "marshal", SimpleNamespace(dumps=lambda c: dumps(dict(c, cut_network=True))))
    else:
        config["seccomp"] = "no filter for this test"
    result, failures = sandbox._spawn(config, QUICK, b"")
    assert list(failures) == [breakage] and "RAN" not in result.stdout
    monkeypatch.setattr(sandbox, "_config", lambda *args, **kwargs: config)
    with pytest.raises(sandbox.SandboxUnavailable, match=breakage):
        sandbox.run([sys.executable, "-c", "print('RAN')"])


# -- the unit-test verifier -----------------------------------------------


def test_honest_code_scores_one_in_every_shape():
    assert run_tests(f"```python\n{ADD}```", TESTS).reward == 1.0
    assert run_tests(ADD, TESTS).reward == 1.0  # no fence: the whole text is code
    assert run_tests(f"```py\n{ADD}```", "assert add(1, 2) == 3\nassert add(0, 0) == 0\n").reward == 1.0
    pytest_style = "import pytest\nfrom solution import add\n\ndef test_type():\n    with pytest.raises(TypeError):\n"
    pytest_style += "        add(1, None)\n"
    assert run_tests(ADD, pytest_style).reward == 1.0


def test_partial_credit_and_all_or_nothing():
    half = "def add(a, b):\n    return 5"
    assert run_tests(half, TESTS).reward == 0.5
    outcome = run_tests(half, TESTS, all_or_nothing=True)
    assert (outcome.reward, outcome.passed, outcome.status) == (0.0, 1, "ok")
    assert "test_negative" in outcome.detail and "5 != -3" in outcome.detail


def test_parallel_runs_all_score():
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        outcomes = list(pool.map(lambda _: run_tests(ADD, TESTS), range(8)))
    assert [o.reward for o in outcomes] == [1.0] * 8


# name: (attack, the outcome's status, words from its reason); PYTEST and PORT get filled in
HOSTILE = {
    "infinite loop": ("""
while True:
    pass
""", "timeout", "wall-clock"),
    "fork bomb": ("""
import os
while True:
    os.fork()
""", "error", "Resource temporarily unavailable"),
    "allocate 10 GiB": ("""
hog = bytearray(10 * 2**30)
""", "error", "MemoryError"),
    "write a 1 GiB file": ("""
with open('big', 'wb') as f:
    for _ in range(1024):
        f.write(bytes(2**20))
""", "error", "File too large"),
    "write outside its dir": (f"""
open('/tmp/pwned', 'w').write('x')  # its own /tmp: allowed, and gone after the run
open({str(REPO / 'pwned')!r}, 'w').write('x')
""", "error", OUTSIDE_REFUSED),
    "read the parent's keys": ("""
import os
found = os.environ.get('FOO_API_KEY', '')
for pid in (os.getppid(), 1, PYTEST):
    try:
        found += open(f'/proc/{pid}/environ').read()
    except OSError:
        pass
assert 'sk-' in found, 'no key'
""", "error", "no key"),
    "socket to 127.0.0.1": ("""
import socket
socket.create_connection(('127.0.0.1', PORT), timeout=2)
""", "error", "Network is unreachable"),
    "kill its parent": ("""
import os
for pid in (os.getppid(), -1):
    try:
        os.kill(pid, 9)
    except OSError:
        pass
os.kill(PYTEST, 9)
""", "error", "ProcessLookupError"),
    "print 100 MiB": ("""
import sys
sys.stdout.write('x' * (100 << 20))
""", "error", "output limit"),
    "daemon that outlives the run": ("""
import os
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv('/bin/sleep', ['sleep', '4242'])
    os._exit(0)
""", "error", "process(es) running after it ended"),
    "edit the test file": ("""
def add(a, b):
    return 0
for name in ('/tmp/test_task.py', 'test_task.py'):
    open(name, 'w').write('def test_small(): pass\\ndef test_negative(): pass\\n')
""", "ok", "2 of 2 tests failed"),
    "exit 0 before the tests": ("""
import os
os._exit(0)
""", "error", "before the tests finished"),
    "sys.exit(0) before the tests": ("""
import sys
sys.exit(0)
""", "error", "SystemExit: 0"),
    "exit 0 inside the tests": ("""
import os
def add(a, b):
    os._exit(0)
""", "error", "before the tests finished"),
    "fake pytest's output": ("""
import os
def add(a, b):
    return 0
print('test_task.py::test_small PASSED\\n===== 2 passed in 0.01s =====')
fake = "plumb-test-record 00 ('test', 'test_small', True, '')\\nplumb-test-record \u00e9 ('done',)\\n"
for fd in range(1, 20):  # the runner's own record pipe among them
    try:
        os.write(fd, fake.encode())
    except OSError:
        pass
""", "ok", "2 of 2 tests failed"),
    "__eq__ always true": ("""
class Anything:
    def __eq__(self, other):
        return True
def add(a, b):
    return Anything()
""", "ok", "2 of 2 tests failed"),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_completion_is_contained_and_scores_zero(name, monkeypatch):
    attack, status, reason = HOSTILE[name]
    monkeypatch.setenv("FOO_API_KEY", SECRET)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        attack = attack.replace("PYTEST", str(os.getpid())).replace("PORT", str(listener.getsockname()[1]))
        start = time.monotonic()
        outcome = run_tests(hostile(attack), TESTS, sandbox.Limits(cpu_seconds=3, wall_seconds=2, processes=8))
        assert time.monotonic() - start < 4
        listener.settimeout(0.05)
        with pytest.raises(socket.timeout):
            listener.accept()
    assert_zero(outcome, status, reason)
    assert SECRET not in outcome.detail and len(outcome.detail) < 5000
    assert not (REPO / "pwned").exists() and not os.path.exists("/tmp/pwned")


def test_completions_without_usable_code():
    assert_zero(run_tests("I cannot write that function.", TESTS), "error", "no Python code")
    assert_zero(run_tests(os.urandom(4096).decode("latin-1"), TESTS), "error", "no Python code")
    assert_zero(run_tests(f"```python\n{os.urandom(512).decode('latin-1')}\n```", TESTS), "error", "does not import")
    start = time.monotonic()
    assert_zero(run_tests(ADD + "#" * 50_000_000, TESTS), "error", "too large")
    assert time.monotonic() - start < 1


def test_broken_tests_are_a_task_error_not_a_model_failure():
    assert_zero(run_tests(ADD, "def test_x(:\n    pass"), "task-error", "do not compile")
    assert_zero(run_tests(ADD, "import no_such_module\n\ndef test_x():\n    pass"), "task-error", "'no_such_module'")
    assert_zero(run_tests(ADD, "def test_x(tmp_path):\n    pass"), "task-error", "fixtures")
    # the solution's own import failures are the model's
    assert_zero(run_tests("import no_such_module\n" + ADD, TESTS), "error", "does not import")
    assert_zero(run_tests("def plus(a, b):\n    return a + b", TESTS), "error", "cannot import name 'add'")


def test_extract_code():
    assert extract_code("text\n```bash\nls\n```\n```Python\nx = 1\n```\n```py\ny = 2\n```") == "x = 1\n"
    assert extract_code("```\nx = 1\n```") == "x = 1\n"
    assert extract_code("```python\nx = 1\n") == "x = 1\n"  # cut off before its closing fence
    assert extract_code("x = 1\n") == "x = 1\n"
    assert extract_code("Sure! Here it is.") is None
    assert extract_code("   \n") is None
