"""The compiled pty drain (``_ptydrain.c``): the pty is read while the loop masks and records.

A pty hands out at most ~4 KiB per read, and each read waits for the kernel's tty worker to
move the next piece into the line discipline. Read from the loop that also masks, shows and
records, the pty is not read while a chunk is processed: its ~64 KiB fill in a fraction of a
millisecond and the command waits in write(2), so reading and processing never overlap (the
recorder used less CPU per MB than asciinema and was still slower). The drain is one thread
(C, never the GIL) that reads the pty master into a ring of :data:`LIMIT` bytes; the loop takes
everything read so far when the drain's fd is readable.

The thread only reads: masking, recording (before showing) and the order of bytes are the
loop's, as before. The ring holds what the loop's gathered read held before (1 MiB), so a
SIGKILL of the recorder loses no more than it did; a full ring stops the reads and the command
waits, as on a full pty.

Optional: built by ``python -m airlock.capture.build_drain`` (``./dev`` does), Linux only.
Without it, or with ``AIRLOCK_PTY_DRAIN=python``, the loop reads the pty itself
(:func:`airlock.capture._fdio.read_available`), with the same output (tests run both).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Protocol, cast

__all__ = ["LIMIT", "SOURCE", "Drain", "current", "load", "open_drain"]

SOURCE = Path(__file__).with_name("_ptydrain.c")
LIMIT = 1 << 20
_VERSION = 1


class Drain(Protocol):
    def fileno(self) -> int: ...
    def take(self, gather: float = 0.0, /) -> tuple[bytes, bool]: ...
    def close(self) -> None: ...


def current(module: ModuleType) -> bool:
    """Whether ``module`` is a build of the ``_ptydrain.c`` this code expects."""
    return getattr(module, "VERSION", None) == _VERSION


def load() -> ModuleType | None:
    """The compiled drain, or ``None``: not built, stale, not Linux, or turned off."""
    if os.environ.get("AIRLOCK_PTY_DRAIN", "").strip().lower() == "python":
        return None
    if not sys.platform.startswith("linux"):
        return None
    try:
        module = importlib.import_module("airlock.capture._ptydrain")
    except ImportError:
        return None
    return module if current(module) else None


def open_drain(fd: int) -> Drain | None:
    """A drain thread reading ``fd`` (a non-blocking pty master), or ``None`` (see
    :func:`load`): then the loop reads the pty itself."""
    module = load()
    if module is None:
        return None
    try:
        return cast(Drain, module.Drain(fd, LIMIT))
    except OSError:  # no thread to be had (a process limit): the loop's own read records alike
        return None
