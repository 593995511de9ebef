"""File-descriptor and terminal plumbing for the runner: gathered reads, whole writes, the
controlling terminal, raw mode, window size, and signals routed to a self-pipe."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import termios
import threading
import time
import tty
from collections.abc import Iterator, Sequence
from types import FrameType

__all__ = [
    "copy_winsize",
    "is_closed",
    "raw_terminal",
    "read_available",
    "signal_wakeup",
    "take_controlling_tty",
    "write_all",
]

READ_SIZE = 1 << 20
GATHER_SECONDS = 0.002  # keep reading a busy stream this long before handing data on


def read_available(fd: int) -> tuple[bytes, bool]:
    """Read what is there now, up to READ_SIZE, in as few reads as the kernel allows.

    A pty hands out about 4 KiB per read; gathering what is already buffered before masking and
    recording turns thousands of tiny events into a few large ones. Returns (data, at EOF).
    """
    view = _buffer()
    size = 0
    deadline = time.monotonic() + GATHER_SECONDS
    while size < READ_SIZE:
        try:
            # Into a buffer kept for the next call: os.read(fd, 1 MiB) allocates 1 MiB for the
            # ~4 KiB a pty read returns, which doubled the CPU of the pty path.
            got = os.readv(fd, [view[size:]])
        except BlockingIOError:
            # A writer that is still going refills the buffer within microseconds; a human at
            # a prompt does not notice a couple of milliseconds.
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                break
            continue
        except OSError as exc:  # EIO: the pty's slave side is gone
            if exc.errno != errno.EIO:
                raise
            got = 0
        if not got:
            return bytes(view[:size]), True
        size += got
    return bytes(view[:size]), False


_BUFFERS = threading.local()


def _buffer() -> memoryview:
    view: memoryview | None = getattr(_BUFFERS, "view", None)
    if view is None:
        view = _BUFFERS.view = memoryview(bytearray(READ_SIZE))
    return view


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:  # the pty's input queue is full: wait until the program reads
            select.select([], [fd], [], 1.0)
            continue
        view = view[written:]


def is_closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


def take_controlling_tty() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def copy_winsize(src: int, dst: int) -> None:
    if dst < 0 or not os.isatty(src):
        return
    with contextlib.suppress(OSError):
        size = fcntl.ioctl(src, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(dst, termios.TIOCSWINSZ, size)


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSAFLUSH, saved)


@contextlib.contextmanager
def signal_wakeup(signums: Sequence[int]) -> Iterator[int]:
    """Route ``signums`` to a self-pipe; the loop reads signal numbers from the returned fd."""
    read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def _noop(_signum: int, _frame: FrameType | None) -> None:
        return None

    previous = {s: signal.signal(s, _noop) for s in signums}
    old_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    try:
        yield read_fd
    finally:
        signal.set_wakeup_fd(old_wakeup)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        os.close(read_fd)
        os.close(write_fd)
