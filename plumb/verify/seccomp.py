"""The sandbox's seccomp filter: a classic-BPF program, built here for this CPU and installed by the
sandbox's init (``sandbox_init.py``) just before it runs the untrusted code.

It refuses with EPERM the syscalls that would leave or widen the sandbox (new namespaces, mounts,
ptrace, keyrings, bpf, perf events, userfaultfd, io_uring), clone with a namespace flag, clone3 with
ENOSYS (fork and threads fall back to clone), and every socket family but AF_UNIX, AF_INET and AF_INET6.
A syscall of another architecture's table (x32 too) is refused; a foreign audit arch kills the process.
"""

from __future__ import annotations

import platform
import struct

# Seccomp: (x86_64, aarch64) numbers of the syscalls refused with EPERM; clone only
# with a namespace flag, clone3 with ENOSYS (so fork and threads fall back to clone).
_ARCHES = {"x86_64": (0, 0xC000003E), "aarch64": (1, 0xC00000B7)}
_DENIED = {"unshare": (272, 97), "setns": (308, 268), "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41),
           "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271), "keyctl": (250, 219),
           "add_key": (248, 217), "request_key": (249, 218), "bpf": (321, 280), "perf_event_open": (298, 241),
           "userfaultfd": (323, 282), "open_tree": (428, 428), "move_mount": (429, 429), "fsopen": (430, 430),
           "fsconfig": (431, 431), "fsmount": (432, 432), "fspick": (433, 433), "mount_setattr": (442, 442)}
_DENIED |= {"io_uring_setup": (425, 425), "io_uring_enter": (426, 426), "io_uring_register": (427, 427)}
_CLONE, _CLONE3 = (56, 220), (435, 435)
_SOCKET, _SOCKETPAIR, _PIVOT_ROOT = (41, 198), (53, 199), (155, 41)
_FAMILIES = (1, 2, 10)  # AF_UNIX, AF_INET, AF_INET6: socket() refuses every other family (EAFNOSUPPORT)
_CLONE_NEW = 0x7E020080  # CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET | NEWTIME


def program() -> bytes | str:
    """The classic-BPF seccomp filter for this CPU, or why there is none."""
    machine = platform.machine()
    if machine not in _ARCHES:
        return f"no seccomp syscall table for {machine} (only x86_64 and aarch64)"
    column, arch = _ARCHES[machine]
    load, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    eperm, enosys, allow, kill = 0x50000 | 1, 0x50000 | 38, 0x7FFF0000, 0x80000000
    eafnosupport = 0x50000 | 97
    prog = [(load, 0, 0, 4), (jeq, 1, 0, arch), (ret, 0, 0, kill), (load, 0, 0, 0)]
    if machine == "x86_64":  # the x32 ABI's numbers
        prog += [(jge, 0, 1, 0x40000000), (ret, 0, 0, eperm)]
    for numbers in _DENIED.values():
        prog += [(jeq, 0, 1, numbers[column]), (ret, 0, 0, eperm)]
    prog += [(jeq, 0, 1, _CLONE3[column]), (ret, 0, 0, enosys)]
    prog += [(jeq, 0, 4, _CLONE[column]), (load, 0, 0, 16), (jset, 0, 1, _CLONE_NEW), (ret, 0, 0, eperm),
             (ret, 0, 0, allow)]
    for number, families in ((_SOCKET[column], _FAMILIES), (_SOCKETPAIR[column], _FAMILIES[:1])):
        n = len(families)  # nr == number: load the family (args[0]); allowed ones jump to "allow"
        prog += [(jeq, 0, n + 3, number), (load, 0, 0, 16)]
        prog += [(jeq, n - i, 0, family) for i, family in enumerate(families)]
        prog += [(ret, 0, 0, eafnosupport), (ret, 0, 0, allow)]
    prog += [(ret, 0, 0, allow)]
    return b"".join(struct.pack("HBBI", *insn) for insn in prog)


def pivot_root_number() -> int:
    """pivot_root's syscall number on this CPU (the init calls it by number)."""
    return _PIVOT_ROOT[_ARCHES.get(platform.machine(), (0,))[0]]
