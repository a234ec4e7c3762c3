"""Who holds a lease: a process identity (kernel boot, pid, process start time) that can be checked.

A worker's consumer-name lease and an upload being read by the API name their holder this way,
so a process restarted on the same host can tell, at once, that the holder it replaces is gone
(rather than waiting for a lease to expire).
"""

from __future__ import annotations

import os
from pathlib import Path


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot, /proc/<pid>/stat), None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def identity(pid: int | None = None) -> str:
    """``<boot id>:<pid>:<start time>`` of this process (or of ``pid``)."""
    pid = os.getpid() if pid is None else pid
    return f"{_boot_id()}:{pid}:{start_time(pid) or ''}"


def holder_gone(holder: str) -> bool:
    """The holder is provably gone: a process of this kernel's boot that no longer exists (or whose pid another
    process has since taken). Anything else (another host, a lease of the old format) is not provable."""
    parts = holder.rsplit(":", 3)
    if len(parts) != 3 and len(parts) != 4:
        return False
    boot, pid, start = parts[-3:]
    if not boot or boot != _boot_id() or not pid.isdigit():
        return False
    return start_time(int(pid)) != start
