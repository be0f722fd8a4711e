"""Who holds a claim on a journal event: a process named so that another process on the
same host can tell whether it is still alive (a pid alone may be reused)."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@cache
def process_owner() -> str:
    """This process: `<boot id>:<pid>:<start time>`, unique across pid reuse and reboots."""
    return owner_of(os.getpid())


# A forked child (a gunicorn worker) is another process: it must not inherit the parent's name.
os.register_at_fork(after_in_child=process_owner.cache_clear)


def owner_of(pid: int) -> str:
    return f"{_boot_id()}:{pid}:{_start_time(pid)}"


def owner_alive(owner: str) -> bool:
    """Whether the process named by `owner` still runs (unparsable names count as alive:
    their claims then wait for their lease, as before owners were recorded)."""
    try:
        boot, pid_text, start = owner.split(":")
        pid = int(pid_text)
    except ValueError:
        return True
    if boot != _boot_id():
        return False  # a process of an earlier boot of this host
    if start and start != "?":
        return _start_time(pid) == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@cache
def _boot_id() -> str:
    try:
        return _BOOT_ID.read_text().strip()[:8]
    except OSError:
        return "-"


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat);
    "?" where /proc cannot say, "" when no such process runs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return "" if Path("/proc/self/stat").exists() else "?"
    except OSError:
        return "?"
    return stat.rsplit(")", 1)[1].split()[19]
