"""Who owns a running run, in a form that pid reuse cannot fool.

An ``Owner`` is a process named by its pid, its start time (field 22 of
``/proc/PID/stat``: clock ticks after boot) and the boot id
(``/proc/sys/kernel/random/boot_id``). A pid alone is not enough: after the
owner dies the kernel hands the same number to another process sooner or
later, and after a reboot every number starts over. The owner is *alive* only
while a process with that pid exists, started at that tick, in this boot.

Without ``/proc`` (not Linux) start time and boot id are unknown (None) and
only the pid is compared: a reused pid then reads as alive, which errs on the
side of leaving a run ``running`` rather than calling a live one dead.

Limits: the boot id is per machine, so a workspace shared by two machines
(a network file system) would see the other machine's live runs as orphaned;
plumb's SQLite store is not meant to be shared that way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str | None:
    try:
        return BOOT_ID.read_text().strip() or None
    except OSError:
        return None


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks after boot, or None (no such process, or no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:  # the command name (field 2) may hold spaces and parentheses: split after its last ')'
        return int(stat.rsplit(")", 1)[1].split()[19])  # field 22 overall; fields 3.. start at index 0
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True)
class Owner:
    pid: int
    start: int | None
    boot: str | None

    @classmethod
    def of(cls, pid: int) -> "Owner":
        return cls(pid, start_time(pid), boot_id())

    @classmethod
    def current(cls) -> "Owner":
        return cls.of(os.getpid())

    def alive(self) -> bool:
        """True while this very process runs: same boot, same pid, same start time."""
        if self.boot is not None and self.boot != boot_id():
            return False
        if self.start is not None:
            now = start_time(self.pid)
            return now == self.start and _not_zombie(self.pid)
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # someone else's process: it exists
            return True
        return True

    def __str__(self) -> str:
        return f"pid {self.pid}"


def _not_zombie(pid: int) -> bool:
    """A zombie (dead, not yet reaped by its parent) has ended: it writes nothing more."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False
