"""A real pseudo-terminal for the console approver's tests, and reading its screen side."""

from __future__ import annotations

import os
import select
import time
from collections.abc import Iterator

import pytest


@pytest.fixture
def terminal() -> Iterator[tuple[int, str]]:
    """(the master fd the test reads and types on, the slave's device name the backend opens)."""
    master, slave = os.openpty()
    yield master, os.ttyname(slave)
    os.close(master)
    os.close(slave)


def read_until(fd: int, marker: bytes, timeout: float = 10) -> bytes:
    """What ``fd`` shows until ``marker`` appears (or ``timeout`` seconds pass)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            seen += os.read(fd, 4096)
    return seen
