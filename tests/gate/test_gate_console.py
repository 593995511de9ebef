"""The console backend on a real pseudo-terminal; no terminal means deny."""

from __future__ import annotations

import asyncio
import os
import select
import time

import pytest

from airlock.audit import SigningKey
from airlock.gate import EXPIRED, ConsoleBackend, Operation, ask


def _read_until(fd: int, marker: bytes, timeout: float = 5) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            seen += os.read(fd, 4096)
    return seen


@pytest.fixture
def pty_pair() -> tuple[int, str]:
    master, slave = os.openpty()
    name = os.ttyname(slave)
    yield master, name
    os.close(master)
    os.close(slave)


async def _answer(
    master: int, reply: bytes, backend: ConsoleBackend, op: Operation
) -> tuple[bytes, object]:
    task = asyncio.create_task(ask(backend, op, 10))
    prompt = await asyncio.to_thread(_read_until, master, b"[y/N]")
    os.write(master, reply)
    return prompt, await task


@pytest.mark.parametrize(
    ("reply", "approved"),
    [(b"y\n", True), (b"YES\r", True), (b"n\n", False), (b"\n", False), (b"maybe\n", False)],
)
def test_prompt_on_tty(
    pty_pair: tuple[int, str], key: SigningKey, op: Operation, reply: bytes, approved: bool
) -> None:
    master, name = pty_pair
    backend = ConsoleBackend(key=key, tty=name)
    backend.poll_interval = 0.02
    prompt, decision = asyncio.run(_answer(master, reply, backend, op))
    assert b"DROP TABLE users" in prompt and b"rule no-drop" in prompt
    assert op.operation_hash()[:16].encode() in prompt
    assert decision.approved is approved  # type: ignore[attr-defined]
    assert decision.by.startswith("console:")  # type: ignore[attr-defined]


def test_no_terminal_means_deny(key: SigningKey, op: Operation, tmp_path: object) -> None:
    backend = ConsoleBackend(key=key, tty="/nonexistent/tty")
    started = time.monotonic()
    decision = asyncio.run(ask(backend, op, 10))
    assert time.monotonic() - started < 5  # denied at once, not after the 10 s timeout
    assert not decision.approved and "non-interactive" in decision.reason


def test_silence_on_the_tty_expires(
    pty_pair: tuple[int, str], key: SigningKey, op: Operation
) -> None:
    _, name = pty_pair
    backend = ConsoleBackend(key=key, tty=name)
    backend.poll_interval = 0.02
    decision = asyncio.run(ask(backend, op, 0.3))
    assert decision.reason == EXPIRED and not decision.approved
