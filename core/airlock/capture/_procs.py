"""Process lifetime for the runner: the command's process group, what it leaves behind, and the
tracer's view of a pid (``/proc``), so that nothing it started goes on unrecorded."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "LEFTOVER_GRACE",
    "end_group",
    "group_pids",
    "kill_group",
    "status",
    "stop",
    "tracer_of",
    "wait_gone",
]

LEFTOVER_GRACE = 1.0  # seconds between SIGTERM and SIGKILL for what the command left behind


def end_group(proc: subprocess.Popen[bytes]) -> bool:
    """SIGTERM whatever is still alive in the command's process group; True when something was.

    (A process that left the group with setsid escapes this; the tracer still knows it.)
    """
    if not group_pids(proc):
        return False
    kill_group(proc, signal.SIGTERM)
    return True


def kill_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signum)


def group_pids(proc: subprocess.Popen[bytes]) -> set[int]:
    """Live (not zombie) members of the command's process group."""
    proc.poll()  # reap the leader, so that a zombie does not count
    try:
        os.killpg(proc.pid, 0)
    except (ProcessLookupError, PermissionError):
        return set()
    members = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None and stat[1] == proc.pid and stat[0] != "Z":
                members.add(int(entry.name))
    return members


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, process group) of ``pid`` from /proc, or None when it is gone."""
    try:
        with Path(f"/proc/{pid}/stat").open("rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0].decode(), int(fields[2])


def tracer_of(pid: int) -> int | None:
    """The pid tracing ``pid`` (None: not traced, or gone)."""
    try:
        with Path(f"/proc/{pid}/status").open("rb") as f:
            for line in f:
                if line.startswith(b"TracerPid:"):
                    return int(line.split()[1]) or None
    except (OSError, ValueError):
        return None
    return None


def wait_gone(alive: Callable[[], object], grace: float) -> None:
    deadline = time.monotonic() + grace
    while alive() and time.monotonic() < deadline:
        time.sleep(0.02)


def stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    proc.wait()


def status(returncode: int) -> tuple[int, str | None]:
    if returncode < 0:
        return 128 - returncode, signal.Signals(-returncode).name
    return returncode, None
