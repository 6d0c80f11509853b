"""Run untrusted code (a model's completion) in a throwaway sandbox.

``run(argv, files, limits)`` starts ``argv`` in a child process and returns a
``Result`` (status, exit code, output, seconds, reason). Every run gets:

- its own pid, mount, IPC and network namespaces (``unshare`` from util-linux),
  plus a user namespace when plumb is not root;
- a fresh root (``pivot_root`` into a tmpfs): ``/usr``, this Python's
  directories and the dynamic linker's cache bound read-only (a Python under
  ``/tmp`` is bound at ``/.plumb/N``), a private ``/tmp`` of ``disk_mb``
  holding ``files`` (the only writable place), an empty ``/run``, a ``/proc``
  of the run's own processes, and a ``/dev`` of ``null``, ``zero``, ``full``,
  ``random``, ``urandom``. No ``/sys``, ``/etc``, ``/var``, ``/home``, checkout
  or host socket. Nothing is written on the host;
- its own IPC namespace, bounded: a SysV shared memory segment lives only while
  a process maps it (``shm_rmid_forced``), so it counts against that process's
  address space; queues, semaphores and POSIX message queues stay small, and
  none outlives the run;
- no network: the network namespace has only a loopback, and it is down
  (``Limits(network=True)`` shares the host's network instead);
- a scrubbed environment: ``PATH``, ``LANG``, ``HOME=/tmp``, ``TMPDIR=/tmp``,
  nothing of the caller's (no ``*_API_KEY``, no ``*_TOKEN``);
- limits: CPU seconds, address space, file size, open files, core dumps off,
  and a cap on processes; the code runs without privileges (see below) under
  a seccomp filter that refuses new namespaces, mounts, ptrace, keyrings, bpf,
  perf events, userfaultfd and io_uring, and every socket family but AF_UNIX,
  AF_INET and AF_INET6 (no AF_VSOCK, netlink or packet sockets);
- a wall-clock timeout and an output cap: past either the whole sandbox is
  killed. A run always ends with every process it started: the first process
  inside is the init of the pid namespace, and when it exits the kernel kills
  whatever is left (daemons, double forks, ``setsid``) before ``run`` returns.

Fail closed: ``protections()`` probes once what this machine and user can set
up; ``run`` raises ``SandboxUnavailable`` without starting anything when a
protection its ``Limits`` ask for is missing, and also when any step of the
setup fails at run time. Code never runs with less protection than asked for.

``run`` is thread-safe and each run is its own process: run many at once from
a thread pool to use every core.

Which protections hold where
----------------------------
*As root* (CI, a VM): all of the above. The code runs as a random
unprivileged uid (1.8e9 + n, a fresh one per run, in no group), so the kernel
applies ``RLIMIT_NPROC`` to it, counted for that run alone.

*As a non-root user on a laptop* (or root of a rootless container): all of
the above too, where unprivileged user namespaces are allowed (the default on
Debian, Fedora, Arch; Ubuntu 23.10 and later restrict them through AppArmor:
``sudo sysctl kernel.apparmor_restrict_unprivileged_userns=0``, or run as
root). The code runs as root of its own user namespace with every capability
dropped and locked out; ``RLIMIT_NPROC`` is counted per user namespace, so the
process cap holds per run.

Either way the code can read only what the fresh root holds: ``/usr`` and this
Python's installation (the venv, its site-packages), read-only.

*Needs more than plumb sets up*: a bound on the run's total memory
(``memory_mb`` bounds each process's address space, so a run holds at most
about ``processes * memory_mb`` plus ``disk_mb`` and what it keeps in pipes
and memfds; a memory cgroup would bound it all), a CPU share and disk I/O
bandwidth (cgroups). ``/proc/self/mountinfo`` still names the host paths of
the bound directories (the venv's, typically the checkout's ``.venv``). The sandbox refuses to run code without namespaces (macOS, WSL1,
Docker's default seccomp profile, which blocks ``unshare``), on Linux older
than 5.12 (``mount_setattr``) and on CPUs other than x86-64 and arm64 (the
seccomp filter's syscall numbers).
"""

from __future__ import annotations

import contextlib
import functools
import marshal
import math
import os
import resource
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from plumb.core.errors import PlumbError
from plumb.verify import seccomp

WORKDIR = "/tmp"
PROTECTIONS = ("namespaces", "filesystem", "ipc", "network", "processes", "limits", "syscalls")
_TOP = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")  # of the host's root, all the new one has
_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")  # the only ones in its /dev
_LINKS = {"/dev/fd": "/proc/self/fd", "/dev/stdin": "/proc/self/fd/0", "/dev/stdout": "/proc/self/fd/1",
          "/dev/stderr": "/proc/self/fd/2"}
_UIDS = (1_800_000_000, 2_000_000_000)
_PATH = "/usr/local/bin:/usr/bin:/bin"
_INIT = Path(__file__).with_name("sandbox_init.py").read_text()  # the sandbox's pid 1, run as ``-c`` source


class SandboxUnavailable(PlumbError):
    """A protection the limits ask for cannot be set up here, so no code ran."""


@dataclass(frozen=True)
class Limits:
    cpu_seconds: float = 5  # CPU time per process (SIGXCPU, then SIGKILL a second later)
    wall_seconds: float = 10  # the whole run, then everything in it is killed
    memory_mb: int = 512  # address space per process
    file_mb: int = 16  # the largest file a process may write
    disk_mb: int = 64  # size of the work dir, a tmpfs
    open_files: int = 64  # per process
    processes: int = 16  # processes and threads of the run, together
    output_bytes: int = 64 * 1024  # stdout and stderr each; more kills the run
    network: bool = False  # True shares the host's network instead of cutting it off


@dataclass
class Result:
    status: Literal["ok", "killed", "timeout"]  # ok: exited by itself, with any code
    returncode: int | None  # exit code, or minus the signal that ended it
    stdout: str
    stderr: str
    seconds: float
    reason: str = ""  # why it was killed or timed out, for a person
    truncated: bool = False  # output went past output_bytes (and the run was killed)
    leftover: int = 0  # processes still running when the main one exited (all killed)


def run(argv: list[str], files: dict[str, str | bytes] | None = None, limits: Limits = Limits(),
        stdin: bytes = b"", peer: list[str] | None = None) -> Result:
    """Run ``argv`` in ``WORKDIR`` holding ``files`` (plain names), under ``limits``.

    ``peer``: a second program to run beside it, in a pid namespace nested in the sandbox's (it
    cannot see, signal or read the first one) and, where plumb is root, as another uid. The two
    talk over pipes: each reads on fd 3 and writes on fd 4. The peer's stdout goes to the run's
    stderr; processes either leaves behind count in ``leftover``."""
    wanted = [name for name in PROTECTIONS if not (name == "network" and limits.network)]
    missing = {name: why for name, why in protections().items() if why is not True and name in wanted}
    if missing:
        raise SandboxUnavailable(_refusal(missing))
    result, failures = _spawn(_config(argv, files or {}, limits, peer=peer), limits, stdin)
    if failures:
        raise SandboxUnavailable(_refusal(failures))
    return result


@functools.cache
def protections() -> dict[str, bool | str]:
    """Each protection in PROTECTIONS: True if it can be set up here, else why not (probed once)."""
    try:
        _, failures = _spawn(_config(None, {}, Limits(), probe=True), Limits(), b"")
    except SandboxUnavailable as exc:
        failures = {"namespaces": str(exc)}
    if "namespaces" in failures:
        return {name: failures["namespaces"] if name == "namespaces" else "needs namespaces" for name in PROTECTIONS}
    return {name: failures.get(name, True) for name in PROTECTIONS}


def _refusal(missing: dict[str, str]) -> str:
    lines = "\n".join(f"  {name}: {why}" for name, why in missing.items())
    where = "see 'Which protections hold where' in plumb/verify/sandbox.py"
    return f"refusing to run untrusted code: the sandbox cannot set up\n{lines}\n({where})"


def _config(argv: list[str] | None, files: dict[str, str | bytes], limits: Limits, probe: bool = False,
            peer: list[str] | None = None) -> dict:
    """Everything the init inside the sandbox does, as plain data (it runs with ``marshal`` only)."""
    for name in files:
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"sandbox file names must be plain names, not {name!r}")
    data = {name: body.encode("utf-8", "surrogateescape") if isinstance(body, str) else body
            for name, body in files.items()}
    if sum(map(len, data.values())) > limits.disk_mb << 20:
        raise ValueError(f"the files do not fit in the sandbox's {limits.disk_mb} MB")
    uid = _UIDS[0] + secrets.randbelow(_UIDS[1] - _UIDS[0] - 1) if _machine_root() else -1
    owner = uid + 1 if uid >= 0 and peer else uid  # with a peer, the work dir is the peer's
    work = f"size={limits.disk_mb}m,nr_inodes=4096,mode=700" + (f",uid={owner},gid={owner}" if uid >= 0 else "")
    binds, links = _root()
    memory = limits.memory_mb << 20
    return {
        "probe": probe,
        "binds": binds,
        "links": links,
        "work": work,
        "files": data,
        "cut_network": probe or not limits.network,
        "host_network": os.stat("/proc/self/ns/net").st_ino,
        "host_ipc": os.stat("/proc/self/ns/ipc").st_ino,
        # the IPC namespace's own bounds: a shared memory segment lives only while a process maps it
        # (so it counts against that process's address space); queues and semaphores stay small
        "ipc": {"kernel/shm_rmid_forced": "1", "kernel/shmmax": str(memory), "kernel/shmall": str(memory // 4096),
                "kernel/shmmni": "64", "kernel/msgmni": "16", "kernel/msgmnb": "65536", "kernel/msgmax": "8192",
                "kernel/sem": "32 1024 32 16", "fs/mqueue/queues_max": "16", "fs/mqueue/msg_max": "10",
                "fs/mqueue/msgsize_max": "8192"},
        "pivot_root": seccomp.pivot_root_number(),
        "uid": uid,
        "owner": owner,
        "peer_uid": uid + 1 if uid >= 0 else -1,
        # the init and unshare count towards the cap in a user namespace (and the peer's reaper)
        "nproc": limits.processes + (0 if uid >= 0 else 3),
        "rlimits": [
            (resource.RLIMIT_CPU, math.ceil(limits.cpu_seconds), math.ceil(limits.cpu_seconds) + 1),
            (resource.RLIMIT_AS, memory, memory),
            (resource.RLIMIT_FSIZE, limits.file_mb << 20, limits.file_mb << 20),
            (resource.RLIMIT_NOFILE, limits.open_files, limits.open_files),
            (resource.RLIMIT_CORE, 0, 0),
            (resource.RLIMIT_MSGQUEUE, 1 << 20, 1 << 20),
        ],
        "seccomp": seccomp.program(),
        "deadline": limits.wall_seconds + 5,  # the init's own timeout, should plumb die first
        "argv": _inside(argv, binds),
        "peer": _inside(peer, binds),
        "env": {"PATH": _PATH, "LANG": "C.UTF-8", "HOME": WORKDIR, "TMPDIR": WORKDIR, "PYTHONDONTWRITEBYTECODE": "1"},
    }


def _root() -> tuple[list[tuple[str, str]], dict[str, str]]:
    """The new root's read-only binds (host path, path inside) and symlinks: ``/usr`` and the
    top-level links into it, the dynamic linker's cache, this Python's directories (at the same
    path, or under ``/.plumb`` when that path would fall in the private ``/tmp``), and the devices."""
    links = dict(_LINKS)
    tops = []
    for top in _TOP:
        if os.path.islink(top):
            links[top] = os.readlink(top)
        elif os.path.isdir(top):
            tops.append(top)
    binds = []
    for n, path in enumerate(_outermost(tuple(tops) + _python_dirs())):
        private = any(_within(path, d) for d in (WORKDIR, "/proc", "/dev", "/.plumb"))
        binds.append((path, f"/.plumb/{n}" if private else path))
    binds += [(path, path) for path in ("/etc/ld.so.cache", *_DEVICES) if os.path.exists(path)]
    return binds, links


def path_inside(path: str) -> str | None:
    """Where ``path`` (a directory or file of this Python's) is inside the sandbox; None if not there."""
    for host, inside in _root()[0]:
        if _within(path, host):
            return inside + path[len(host):]
    return None


def _inside(argv: list[str] | None, binds: list[tuple[str, str]]) -> list[str] | None:
    """``argv`` with a program path under a moved bind rewritten to where it is inside."""
    if not argv:
        return argv
    for host, inside in binds:
        if host != inside and _within(argv[0], host):
            return [inside + argv[0][len(host):], *argv[1:]]
    return argv


@functools.cache
def _machine_root() -> bool:
    """Root of the machine, free to run code as any uid (root of a container's user namespace is not)."""
    with open("/proc/self/uid_map") as f:
        return os.geteuid() == 0 and f.read().split() == ["0", "0", "4294967295"]


def _within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _outermost(paths: tuple[str, ...]) -> list[str]:
    """The existing directories among ``paths`` (resolved), without those inside another."""
    real = sorted({os.path.realpath(p) for p in paths if os.path.isdir(p)} - {"/"})
    return [p for p in real if not any(q != p and _within(p, q) for q in real)]


def _python_dirs() -> tuple[str, ...]:
    """Where this Python lives: bound read-only into the sandbox's root."""
    executable_dir = os.path.dirname(os.path.realpath(sys.executable))
    return (sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix, executable_dir)


def _spawn(config: dict, limits: Limits, stdin: bytes) -> tuple[Result, dict[str, str]]:
    """Start the sandbox's init under ``unshare``; returns the result and the setup steps that failed."""
    unshare = shutil.which("unshare", path=_PATH)
    if unshare is None:
        raise SandboxUnavailable("unshare (util-linux) is not installed")
    cmd = [unshare, "--pid", "--fork", "--kill-child", "--mount", "--ipc"]
    cmd += ["--net"] if config["cut_network"] else []
    cmd += ["--user", "--map-root-user"] if config["uid"] < 0 else []
    config_fd, stdin_fd = _memfd(marshal.dumps(config)), _memfd(stdin)
    status_r, status_w = os.pipe()
    cmd += ["--", os.path.realpath(sys.executable), "-I", "-S", "-c", _INIT, str(config_fd), str(status_w)]
    start = time.monotonic()
    try:
        try:
            proc = subprocess.Popen(cmd, stdin=stdin_fd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    pass_fds=(config_fd, status_w), env={"PATH": _PATH, "LANG": "C.UTF-8"},
                                    cwd="/", start_new_session=True)
        finally:
            for fd in (config_fd, stdin_fd, status_w):
                os.close(fd)
        with proc:
            try:
                out, stopped = _collect(proc, status_r, start + limits.wall_seconds, limits.output_bytes)
            except BaseException:  # Ctrl-C, say: unshare's death takes the init and all inside with it
                os.killpg(proc.pid, signal.SIGKILL)
                raise
            proc.wait()
            stdout, stderr = (out[f.fileno()].decode("utf-8", "replace") for f in (proc.stdout, proc.stderr))
    finally:
        os.close(status_r)
    status = _status_lines(out[status_r])
    failures = {step: why for step, why in status.get("fail", [])}
    if "pid" not in status and not failures and not stopped:
        raise SandboxUnavailable(f"the sandbox did not start: {stderr.strip() or f'exit code {proc.returncode}'}")
    result = Result("ok", None, stdout, stderr, time.monotonic() - start)
    if stopped == "timeout":
        result.status, result.reason = "timeout", f"wall-clock limit of {limits.wall_seconds:g} s reached; killed"
    elif stopped == "output":
        result.status, result.truncated = "killed", True
        result.reason = f"output limit of {limits.output_bytes} bytes exceeded; killed"
    elif "exit" not in status:
        result.status, result.reason = "killed", "the sandbox's init died"
    else:
        code, leftover = status["exit"][0]
        result.returncode, result.leftover = int(code), int(leftover)
        if result.returncode < 0:
            result.status, result.reason = "killed", _signal_reason(-result.returncode, limits)
    return result, failures


def _memfd(data: bytes) -> int:
    """A file in memory holding ``data``, for the sandbox to read (no file on disk, no pipe to feed)."""
    fd = os.memfd_create("plumb-sandbox")
    with open(fd, "wb", closefd=False) as f:
        f.write(data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _collect(proc: subprocess.Popen, status_r: int, deadline: float, cap: int) -> tuple[dict[int, bytearray], str]:
    """Read stdout, stderr and the status pipe until they close. Past the deadline ("timeout") or
    past ``cap`` bytes on stdout or stderr ("output") kill the sandbox, then drain and drop what
    comes after (unshare complains of the SIGKILL) until the pipes close, or kill unshare too."""
    out = {fd: bytearray() for fd in (proc.stdout.fileno(), proc.stderr.fileno(), status_r)}
    stopped = ""
    with selectors.DefaultSelector() as sel:
        for fd in out:
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0 and stopped:  # everything inside is dead, but unshare lingers
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                break
            stop = "timeout" if left <= 0 else ""
            for key, _ in sel.select(max(left, 0)):
                data = os.read(key.fd, 65536)
                if not data:
                    sel.unregister(key.fd)
                room = len(data) if key.fd == status_r else 0 if stopped else max(0, cap - len(out[key.fd]))
                out[key.fd] += data[:room]
                stop = "output" if len(data) > room else stop
            if stop and not stopped:
                stopped, deadline = stop, time.monotonic() + 5
                _kill(proc, _status_lines(out[status_r]))
    return out, stopped


def _kill(proc: subprocess.Popen, status: dict) -> None:
    """Kill the pid namespace's init (the kernel then kills everything inside, and unshare exits
    once it is all gone), or the whole unshare group if the init has not said its pid yet."""
    with contextlib.suppress(ProcessLookupError):
        if "pid" in status:
            os.kill(int(status["pid"][0][0]), signal.SIGKILL)
        else:
            os.killpg(proc.pid, signal.SIGKILL)


def _status_lines(raw: bytes) -> dict[str, list[list[str]]]:
    lines: dict[str, list[list[str]]] = {}
    for line in raw.decode("utf-8", "replace").splitlines():
        word, _, rest = line.partition(" ")
        lines.setdefault(word, []).append(rest.split(" ", 1) if word == "fail" else rest.split())
    return lines


def _signal_reason(signum: int, limits: Limits) -> str:
    if signum == signal.SIGXCPU:
        return f"CPU time limit of {limits.cpu_seconds:g} s exceeded"
    if signum == signal.SIGXFSZ:
        return f"file size limit of {limits.file_mb} MB exceeded"
    hint = ": the CPU hard limit, or out of memory" if signum == signal.SIGKILL else ""
    return f"killed by signal {signum} ({signal.strsignal(signum)}{hint})"
