"""The console backend on a real pseudo-terminal; no terminal means deny."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from tests.support.terminal import read_until, terminal

from airlock.audit import SigningKey
from airlock.gate import EXPIRED, ConsoleBackend, Operation, ask

__all__ = ["terminal"]  # the fixture


async def _answer(
    master: int, reply: bytes, backend: ConsoleBackend, op: Operation
) -> tuple[bytes, object]:
    task = asyncio.create_task(ask(backend, op, 10))
    prompt = await asyncio.to_thread(read_until, master, b"[y/N]")
    os.write(master, reply)
    return prompt, await task


@pytest.mark.parametrize(
    ("reply", "approved"),
    [(b"y\n", True), (b"YES\r", True), (b"n\n", False), (b"\n", False), (b"maybe\n", False)],
)
def test_prompt_on_tty(
    terminal: tuple[int, str], key: SigningKey, op: Operation, reply: bytes, approved: bool
) -> None:
    master, name = terminal
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
    terminal: tuple[int, str], key: SigningKey, op: Operation
) -> None:
    _, name = terminal
    backend = ConsoleBackend(key=key, tty=name)
    backend.poll_interval = 0.02
    decision = asyncio.run(ask(backend, op, 0.3))
    assert decision.reason == EXPIRED and not decision.approved


def test_typed_ahead_input_is_flushed_before_the_question(
    terminal: tuple[int, str], key: SigningKey, op: Operation
) -> None:
    """A "y" waiting in the terminal before the prompt (typed ahead, or pushed by an agent
    with TIOCSTI) is no answer: only what comes after the question counts."""
    master, name = terminal
    os.write(master, b"y\r")  # in the terminal's input queue before anything is asked
    backend = ConsoleBackend(key=key, tty=name)
    backend.poll_interval = 0.02
    _, decision = asyncio.run(_answer(master, b"n\n", backend, op))
    assert decision.approved is False  # type: ignore[attr-defined]
    assert decision.reason == "denied at prompt"  # type: ignore[attr-defined]


def test_an_agent_sharing_the_terminal_cannot_answer_with_tiocsti(
    terminal: tuple[int, str], key: SigningKey, op: Operation
) -> None:
    """The agent types "y\\r" into the terminal with TIOCSTI as soon as anything is asked:
    the backend told that the agent shares the terminal never asks, and denies."""
    master, name = terminal
    injector = subprocess.Popen(
        [sys.executable, "-c", _INJECT, name],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        backend = ConsoleBackend(key=key, tty=name, agent_shares_terminal=True)
        backend.poll_interval = 0.02
        decision = asyncio.run(ask(backend, op, 3))
    finally:
        injector.kill()
        injector.wait()
    assert decision.approved is False and "shares this terminal" in decision.reason
    assert b"[y/N]" not in read_until(master, b"[y/N]", timeout=0.3)  # never asked


def test_tiocsti_really_answers_a_shared_terminal(
    terminal: tuple[int, str], key: SigningKey, op: Operation
) -> None:
    """Why the refusal matters: on a shared terminal, TIOCSTI input reads as the human's."""
    if not hasattr(termios, "TIOCSTI"):
        pytest.skip("no TIOCSTI on this platform")
    master, name = terminal
    backend = ConsoleBackend(key=key, tty=name)
    backend.poll_interval = 0.02

    async def run() -> object:
        task = asyncio.create_task(ask(backend, op, 10))
        await asyncio.to_thread(read_until, master, b"[y/N]")
        injected = subprocess.run(
            [sys.executable, "-c", _INJECT_NOW, name], capture_output=True, check=False
        )
        if injected.returncode != 0:
            task.cancel()
            pytest.skip("TIOCSTI is disabled here (dev.tty.legacy_tiocsti=0 or no capability)")
        return await task

    decision = asyncio.run(run())
    assert decision.approved is True  # type: ignore[attr-defined]


def test_the_session_tells_the_console_backend_whether_the_agent_has_its_own_pty(
    key: SigningKey, op: Operation, tmp_path: Path
) -> None:
    from airlock.ci.identity import detect_identity
    from airlock.jobs._parts import _approval_backend
    from airlock.jobs.request import SessionRequest
    from airlock.policy import Policy

    request = SessionRequest(
        argv=("true",),
        sessions_dir=tmp_path,
        policy=Policy.model_validate({"approvals": {"backend": "console"}}),
        identity=detect_identity({}, cwd=tmp_path),
        key=key,
        agent_env={},
        secret_env={},
    )
    shared = _approval_backend(request, lambda *_: None, own_pty=False)  # type: ignore[arg-type,return-value]
    decision = asyncio.run(ask(shared, op, 3))
    assert not decision.approved and "shares this terminal" in decision.reason


_INJECT_NOW = """
import fcntl, os, sys, termios
fd = os.open(sys.argv[1], os.O_RDWR | os.O_NOCTTY)
for byte in b"y\\r":
    fcntl.ioctl(fd, termios.TIOCSTI, bytes([byte]))
"""
_INJECT = """
import fcntl, os, sys, termios, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_NOCTTY)
while True:
    try:
        for byte in b"y\\r":
            fcntl.ioctl(fd, termios.TIOCSTI, bytes([byte]))
    except OSError:
        pass
    time.sleep(0.01)
"""
