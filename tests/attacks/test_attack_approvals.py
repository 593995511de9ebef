"""Attacks on approvals that the earlier reviews did not name.

The console approver writes the held operation's text to the human's terminal. That text is
the agent's: a SQL comment may hold any character, terminal escapes included. Cursor-up and
erase-line sequences inside ``DROP TABLE users; -- …`` rewrite what the approver sees into a
harmless statement under a harmless rule; the approver answers ``y`` to what it saw.
"""

from __future__ import annotations

import asyncio
import os
import select
import time
from collections.abc import Iterator

import pytest

from airlock.audit import SigningKey
from airlock.gate import ConsoleBackend, Operation, ask

DISGUISE = (
    "DROP TABLE users; -- "
    "\x1b[1A\x1b[2K\r"  # up to the header line, erase it
    "airlock: approval needed (sql on gateway appdb, rule read-audit)\r\n"
    "\x1b[2K  SELECT count(*) FROM users"  # erase the statement line, write another
    "\u202e"  # and a right-to-left override for good measure
)


@pytest.fixture
def terminal() -> Iterator[tuple[int, str]]:
    master, slave = os.openpty()
    yield master, os.ttyname(slave)
    os.close(master)
    os.close(slave)


def _read_until(fd: int, marker: bytes, timeout: float = 10) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            seen += os.read(fd, 4096)
    return seen


async def _prompted(master: int, backend: ConsoleBackend, op: Operation) -> bytes:
    task = asyncio.create_task(ask(backend, op, 10))
    prompt = await asyncio.to_thread(_read_until, master, b"[y/N]")
    os.write(master, b"n\n")
    await task
    return prompt


def test_the_console_prompt_shows_the_agents_text_inert(terminal: tuple[int, str]) -> None:
    master, name = terminal
    backend = ConsoleBackend(key=SigningKey.generate(), tty=name)
    backend.poll_interval = 0.02
    op = Operation(kind="sql", text=DISGUISE, rule_id="no-drop", gateway="appdb")
    prompt = asyncio.run(_prompted(master, backend, op))
    assert b"DROP TABLE users" in prompt and b"rule no-drop" in prompt
    assert b"\x1b" not in prompt, prompt  # no escape sequence reaches the terminal
    assert "\u202e".encode() not in prompt
    assert b"\\x1b[1A" in prompt  # shown, as text, for the approver to see
