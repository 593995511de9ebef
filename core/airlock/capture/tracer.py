"""Find and probe the exec tracer (strace), so a missing or blocked tracer is known before the
agent starts, not after."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass

from airlock.capture.exectrace import STRACE_ARGS

__all__ = ["TracerStatus", "probe_strace", "start_probe"]

_PROBE_TIMEOUT = 10.0


@dataclass(frozen=True)
class TracerStatus:
    """What exec capture can do on this machine."""

    available: bool
    path: str | None
    args: tuple[str, ...]
    reason: str  # why it is unavailable, or what was found

    @property
    def name(self) -> str:
        return "strace" if self.available else "none"


def probe_strace(path: str | None = None) -> TracerStatus:
    """Check that strace exists and may trace here (ptrace can be forbidden in containers).

    Tries ``--seccomp-bpf`` first (far cheaper per syscall), then plain ``-f``; each with
    ``-DDD`` (the command stays Airlock's own child), then without it for an older strace;
    all of that with ``--pidns-translation`` first, then without.
    """
    found = path or shutil.which("strace")
    if found is None:
        return TracerStatus(False, None, (), "strace is not installed (apt-get install strace)")
    last_error = ""
    for args in _variants():
        try:
            proc = subprocess.run(
                [found, *args, "-o", "/dev/null", "--", "true"],
                capture_output=True,
                timeout=_PROBE_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return TracerStatus(False, found, (), f"strace could not run: {exc}")
        if proc.returncode == 0:
            return TracerStatus(True, found, args, f"strace at {found}")
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        last_error = lines[-1] if lines else f"exit status {proc.returncode}"
    return TracerStatus(False, found, (), f"strace cannot trace here: {last_error}")


def start_probe(path: str | None) -> Callable[[], TracerStatus]:
    """Probe strace on a background thread; the returned function waits for the result."""
    result: list[TracerStatus] = []
    thread = threading.Thread(
        target=lambda: result.append(probe_strace(path)), name="airlock-strace-probe", daemon=True
    )
    thread.start()

    def wait() -> TracerStatus:
        thread.join()
        return result[0] if result else probe_strace(path)  # the thread failed: say why here

    return wait


def _variants() -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []
    # --pidns-translation (strace >= 5.9) links parents inside the sandbox's PID namespace;
    # an older strace still records every exec, with ppid unknown there.
    for pidns in ((), ("--pidns-translation",)):
        for drop in ((), ("--seccomp-bpf",), ("-DDD",), ("-DDD", "--seccomp-bpf")):
            args = tuple(a for a in STRACE_ARGS if a not in drop + pidns)
            if args not in found:
                found.append(args)
    return found
