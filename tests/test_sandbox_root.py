"""The sandbox's fresh root, IPC namespace and socket allow-list, against what a red-team pass
found: IPC objects outliving a run, unix sockets and AF_VSOCK reachable from inside, io_uring, and
host files (/var/lib, the checkout, /sys, /proc/1/cmdline) readable inside."""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import sys

import pytest

from plumb.verify import sandbox
from tests.test_sandbox import QUICK, REPO, healthy_afterwards  # noqa: F401 (the autouse fixture)

libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
KEYS = {"shm": 0x504C5501, "msg": 0x504C5502, "sem": 0x504C5503}


def inside(code: str, limits: sandbox.Limits = QUICK) -> list[str]:
    result = sandbox.run([sys.executable, "-I", "-c", code], {}, limits)
    assert result.status == "ok" and result.returncode == 0, result
    return result.stdout.splitlines()


def test_no_ipc_object_outlives_a_run_and_the_hosts_are_out_of_reach():
    host_segment = libc.shmget(0, 4096, 0o1600)  # IPC_PRIVATE, IPC_CREAT | 0600
    assert host_segment >= 0
    queue = f"/plumb-test-{os.getpid()}".encode()
    try:
        lines = inside(f"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
print(libc.shmat({host_segment}, None, 0) == ctypes.c_void_p(-1).value, ctypes.get_errno())
print(libc.shmget({KEYS['shm']}, 1 << 20, 0o1600) >= 0, libc.msgget({KEYS['msg']}, 0o1600) >= 0,
      libc.semget({KEYS['sem']}, 1, 0o1600) >= 0, libc.mq_open({queue!r}, os.O_CREAT | os.O_RDWR, 0o600, None) >= 0)
""")
        # the host's segment: EINVAL (asked before anything is made inside: on a fresh machine the host's first
        # segment has id 0, as has the first one made in the sandbox's new namespace); then made inside
        assert lines == ["True 22", "True True True True"]
        listing = subprocess.run(["ipcs", "-a"], capture_output=True, text=True, check=True).stdout
        assert not any(f"{key:#010x}" in listing for key in KEYS.values()), listing
        assert libc.mq_open(queue, os.O_RDONLY) == -1 and ctypes.get_errno() == 2  # ENOENT
    finally:
        libc.shmctl(host_segment, 0, None)  # IPC_RMID


def test_shared_memory_counts_against_the_memory_limit():
    limits = sandbox.Limits(cpu_seconds=2, wall_seconds=5, memory_mb=256)
    lines = inside("""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
failed = ctypes.c_void_p(-1).value
print(libc.shmget(0, 300 << 20, 0o1600), ctypes.get_errno())  # past shmmax: EINVAL
ids = [libc.shmget(0, 150 << 20, 0o1600) for _ in range(2)]
print(ids[1], ctypes.get_errno())  # together past the namespace's total (shmall): ENOSPC
first = libc.shmat(ids[0], None, 0)
ctypes.memset(first, 1, 150 << 20)  # mapped, so within this process's address space
libc.shmdt(ctypes.c_void_p(first))
print(libc.shmat(ids[0], None, 0) == failed, ctypes.get_errno())  # unmapped, it is gone: EINVAL or EIDRM
""", limits)
    assert lines[0] == "-1 22" and lines[1] == "-1 28" and lines[2] in ("True 22", "True 43"), lines


def test_only_unix_and_inet_sockets_and_nothing_outside_to_reach(tmp_path):
    paths = [f"/var/lib/plumb-test-{os.getpid()}.sock", str(REPO / f"plumb-test-{os.getpid()}.sock"),
             str(tmp_path / "host.sock")]
    servers = []
    try:
        for path in paths:
            servers.append(socket.socket(socket.AF_UNIX))
            servers[-1].bind(path)
            servers[-1].listen()
        lines = inside(f"""
import ctypes, socket
for family, kind in [(socket.AF_UNIX, socket.SOCK_STREAM), (socket.AF_INET, socket.SOCK_STREAM),
                     (socket.AF_INET6, socket.SOCK_DGRAM), (socket.AF_VSOCK, socket.SOCK_STREAM),
                     (socket.AF_NETLINK, socket.SOCK_RAW), (socket.AF_PACKET, socket.SOCK_RAW)]:
    try:
        socket.socket(family, kind).close()
        print('made', end=' ')
    except OSError as exc:
        print(exc.errno, end=' ')
print()
for path in {paths!r}:
    try:
        socket.socket(socket.AF_UNIX).connect(path)
        print('connected')
    except OSError as exc:
        print(exc.errno)
libc = ctypes.CDLL(None, use_errno=True)
print(libc.syscall(425, 8, ctypes.create_string_buffer(120)), ctypes.get_errno())  # io_uring_setup
""")
        assert lines[0] == "made made made 97 97 97 "  # EAFNOSUPPORT
        assert lines[1:4] == ["2", "2", "2"]  # no such file: none of them is in the sandbox
        assert lines[4] == "-1 1"
        for server in servers:
            server.settimeout(0.05)
            with pytest.raises(socket.timeout):
                server.accept()
    finally:
        for server, path in zip(servers, paths):
            server.close()
            os.unlink(path)


def test_a_fresh_root_with_no_host_files_no_sys_and_only_its_own_processes():
    lines = inside(f"""
import os
print(sorted(os.listdir('/')))
print(sorted(p for p in os.listdir('/proc') if p.isdigit()))
print(open('/proc/1/cmdline', 'rb').read().count({str(REPO).encode()!r}))
for path in ['/sys', '/var/lib', '/etc/passwd', '/etc/hostname', {str(REPO / 'README.md')!r}, '/home', '/root/.bashrc']:
    try:
        open(path).read() if '.' in path or 'etc' in path else os.listdir(path)
        print('read', path)
    except OSError as exc:
        print(exc.errno, end=' ')
""")
    assert not {"sys", "var", "home", "boot", "opt", "srv", "mnt"} & set(eval(lines[0])), lines[0]
    assert lines[1] == "['1', '2']" and lines[2] == "0"
    assert lines[3] == "2 2 2 2 2 2 2 ", lines  # ENOENT, every one


def test_a_python_under_tmp_is_bound_elsewhere_so_the_private_tmp_stays_empty(monkeypatch):
    monkeypatch.setattr(sandbox, "_python_dirs", lambda: ("/tmp", "/usr/lib", os.path.dirname(sys.executable)))
    binds, links = sandbox._root()
    moved = dict(binds)["/tmp"]
    assert moved.startswith("/.plumb/") and ("/usr", "/usr") in binds and links["/dev/fd"] == "/proc/self/fd"
    assert sandbox._inside(["/tmp/x/.venv/bin/python", "-c", ""], binds) == [f"{moved}/x/.venv/bin/python", "-c", ""]
