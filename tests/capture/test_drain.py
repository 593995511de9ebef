"""The pty drain (``_ptydrain.c``) and the loop's own pty read, on the same output: every byte,
in order, whatever the pauses and however slowly the recorder takes it; the drain thread stops
when closed, whether the pty is quiet or its ring is full; EOF comes after the last byte."""

from __future__ import annotations

import os
import random
import select
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

import pytest

from airlock.capture import drain
from airlock.capture.runner import Command, ProcessRunner

DEADLINE = 20.0  # seconds to wait for something that must happen (never a timing assertion)
_WRITER = """
import os, random, sys, time
data = open(sys.argv[1], 'rb').read()
rng = random.Random(3)
at = 0
while at < len(data):
    size = rng.choice([1, 7, 4095, 4097, 65536, 300000])
    os.write(1, data[at : at + size])
    at += size
    if rng.random() < 0.05:
        time.sleep(0.005)  # the drain waits on an empty pty, the loop's gather times out
"""


def _payload(tmp_path: Path, size: int) -> tuple[Path, bytes]:
    data = random.Random(7).randbytes(size)
    path = tmp_path / "payload"
    path.write_bytes(data)
    return path, data.replace(b"\n", b"\r\n")  # the pty's ONLCR, as a terminal shows it


def test_every_byte_arrives_in_order_however_slowly_it_is_taken(
    drain_way: str, tmp_path: Path
) -> None:
    path, expected = _payload(tmp_path, 3_000_000)
    got = bytearray()
    calls = 0

    def slow_recorder(stream: str, data: bytes) -> None:
        nonlocal calls
        assert stream == "pty"
        got.extend(data)
        calls += 1
        if calls % 3 == 0:
            time.sleep(0.01)  # the ring (or the pty) fills meanwhile

    runner = ProcessRunner(
        Command((sys.executable, "-c", _WRITER, str(path)), dict(os.environ), str(tmp_path)),
        use_pty=True,
        tracer=None,
        on_output=slow_recorder,
        on_process=lambda _e: None,
        on_idle=lambda: None,
    )
    assert runner.run().exit_status == 0
    assert bytes(got) == expected


def _take_all(drain: object, fd_of: int) -> tuple[bytes, bool]:
    got, eof = b"", False
    rng = random.Random(2)
    deadline = time.monotonic() + DEADLINE
    while not eof and time.monotonic() < deadline:
        select.select([fd_of], [], [], 0.05)
        data, eof = drain.take()  # type: ignore[attr-defined]
        got += data
        time.sleep(rng.choice([0, 0, 0.0005]))  # now slower, now faster than the reader
    return got, eof


def _write_in_pieces(fd: int, data: bytes) -> None:
    rng = random.Random(4)
    at = 0
    while at < len(data):
        size = rng.randint(1, 3000)
        os.write(fd, data[at : at + size])
        at += size
        if rng.random() < 0.1:
            time.sleep(0.0005)
    os.close(fd)


def test_a_small_ring_wraps_and_keeps_the_order(compiled_drain: ModuleType) -> None:
    master, slave = os.openpty()
    os.set_blocking(master, False)
    drain = compiled_drain.Drain(master, 1000)  # not a multiple of any read size
    data = random.Random(1).randbytes(300_000).replace(b"\n", b"-")
    writer = threading.Thread(target=_write_in_pieces, args=(slave, data))
    try:
        writer.start()
        got, eof = _take_all(drain, drain.fileno())
    finally:
        writer.join(DEADLINE)
        drain.close()
        os.close(master)
    assert eof  # the slave closed: EOF, after every byte
    assert got == data


def test_a_prompt_is_handed_on_while_the_command_waits(compiled_drain: ModuleType) -> None:
    """A gathering take waits for more only while the command writes: a prompt comes out."""
    master, slave = os.openpty()
    os.set_blocking(master, False)
    drain = compiled_drain.Drain(master, 1 << 20)
    try:
        os.write(slave, b"password: ")
        got = b""
        deadline = time.monotonic() + DEADLINE
        while got != b"password: " and time.monotonic() < deadline:
            select.select([drain.fileno()], [], [], 0.05)
            data, eof = drain.take(0.002)
            got += data
            assert not eof
        assert got == b"password: "
    finally:
        drain.close()
        os.close(slave)
        os.close(master)


def _closes(drain: object) -> bool:
    closer = threading.Thread(target=drain.close)  # type: ignore[attr-defined]
    closer.start()
    closer.join(DEADLINE)
    return not closer.is_alive()


def test_close_stops_the_thread_on_a_quiet_pty_and_on_a_full_ring(
    compiled_drain: ModuleType,
) -> None:
    master, slave = os.openpty()
    os.set_blocking(master, False)
    try:
        quiet = compiled_drain.Drain(master, 1 << 20)
        assert _closes(quiet)  # it was waiting for the pty to be readable
        assert quiet.take() == (b"", False)
        full = compiled_drain.Drain(master, 100)
        os.write(slave, b"x" * 5000)
        readable, _, _ = select.select([full.fileno()], [], [], DEADLINE)
        assert readable, "the drain read nothing"
        assert _closes(full)  # it was waiting for room in its ring
        data, eof = full.take()
        assert data and set(data) == {ord("x")} and len(data) <= 100 and not eof
    finally:
        os.close(slave)
        os.close(master)


def test_a_drain_that_cannot_start_leaves_the_reading_to_the_loop(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    class NoThreads:
        VERSION = 1

        @staticmethod
        def Drain(fd: int, limit: int) -> None:
            raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(drain, "load", lambda: NoThreads)
    got = bytearray()
    runner = ProcessRunner(
        Command(("sh", "-c", "echo still recorded"), dict(os.environ), str(tmp_path)),
        use_pty=True,
        tracer=None,
        on_output=lambda _s, data: got.extend(data),
        on_process=lambda _e: None,
        on_idle=lambda: None,
    )
    assert runner.run().exit_status == 0
    assert bytes(got) == b"still recorded\r\n"
