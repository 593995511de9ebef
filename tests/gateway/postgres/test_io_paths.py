"""Both ways a relayed connection's bytes move give the same outcomes: the compiled I/O loop
(``_loop.c``, the default when built) and asyncio's transports (the fallback). The rest of the
suite runs whichever is built; here the tests where the I/O path matters most (holds and their
client going away, ordering, recording before sending, flow control, masking, upstream loss)
run on each path, forced. The loop itself is tested on socket pairs first. The extension is
built into a temporary directory when it is not built already (skipped without a C compiler)."""

from __future__ import annotations

import contextlib
import importlib.util
import random
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest
from tests.gateway.postgres.conftest import MakeGateway, RunningGateway
from tests.gateway.postgres.test_gateway import (  # noqa: F401 (run here on each I/O path)
    test_a_client_that_reads_slowly_gets_every_row_while_others_are_served,
    test_a_failing_approver_fails_closed,
    test_a_query_pipelined_behind_the_password_is_answered,
    test_garbage_gets_a_protocol_error_and_the_gateway_keeps_serving,
    test_masking_is_on_the_bytes_the_client_receives,
    test_messages_pipelined_behind_a_held_statement_wait_and_keep_their_order,
    test_pipeline_keeps_responses_in_order_around_a_refusal,
    test_require_approval_denied_is_refused,
    test_require_approval_waits_and_runs_when_approved,
    test_upstream_disappearing_mid_session,
)
from tests.gateway.postgres.test_issue12 import (  # noqa: F401
    test_a_backslash_statement_pipelined_behind_a_running_one_is_refused,
    test_a_held_drop_never_runs_once_its_client_is_killed,
    test_closing_the_gateway_records_every_pending_hold_without_tracebacks,
    test_one_approval_runs_one_execution_of_a_prepared_update,
)
from tests.gateway.postgres.test_recorded_first import (  # noqa: F401
    test_a_statement_whose_event_cannot_be_recorded_is_never_sent,
)

from airlock.gateway.postgres import native
from airlock.gateway.postgres.build_rows import build_loop

CLIENT, UPSTREAM = native.CLIENT, native.UPSTREAM


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    built = native.load()
    if built is not None:
        return built
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler: asyncio's transports are the only I/O path")
    path = build_loop(Path(tmp_path_factory.mktemp("loop")))
    spec = importlib.util.spec_from_file_location("_loop", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(params=["compiled", "python"])
def make_gateway(
    make_gateway: MakeGateway, request: pytest.FixtureRequest, compiled: ModuleType
) -> MakeGateway:
    """The suite's gateways, on the I/O path of this run (set before any client connects)."""

    def make(**kwargs: Any) -> RunningGateway:
        gw = make_gateway(**kwargs)
        shared = gw.handle.gateway._shared
        shared.io = compiled.Loop() if request.param == "compiled" else False
        return gw

    return make


pytestmark = pytest.mark.service


# ----------------------------------------------------------------- the loop on socket pairs


class Pair:
    """A Loop relaying one 'connection' between two socket pairs, echoing through Python."""

    def __init__(self, module: ModuleType, transform: Callable[[int, bytes], bytes]) -> None:
        self.io = module.Loop()
        self.client, self.client_end = socket.socketpair()
        self.upstream, self.upstream_end = socket.socketpair()
        self.ended: list[tuple[int, str]] = []
        self.seen: list[tuple[int, bytes]] = []
        self.done = threading.Event()

        def on_data(side: int, data: bytes) -> None:
            self.seen.append((side, data))
            self.io.send(self.handle, 1 - side, transform(side, data))

        def on_end(side: int, reason: str) -> None:
            self.ended.append((side, reason))
            self.done.set()

        self.handle = self.io.add(
            self.client_end.fileno(), self.upstream_end.fileno(), on_data, on_end
        )

    def close(self) -> None:
        self.io.close()
        for sock in (self.client, self.client_end, self.upstream, self.upstream_end):
            sock.close()


@pytest.fixture
def pair(compiled: ModuleType) -> Iterator[Callable[..., Pair]]:
    made: list[Pair] = []

    def make(transform: Callable[[int, bytes], bytes] = lambda side, data: data) -> Pair:
        made.append(Pair(compiled, transform))
        return made[-1]

    yield make
    for p in made:
        p.close()


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    sock.settimeout(10)
    out = b""
    while len(out) < size:
        chunk = sock.recv(size - len(out))
        assert chunk, "closed early"
        out += chunk
    return out


def test_the_loop_reads_nothing_until_started_then_relays_through_python(
    pair: Callable[..., Pair],
) -> None:
    p = pair(lambda side, data: data.upper() if side == CLIENT else data)
    p.client.sendall(b"select 1")
    time.sleep(0.05)  # an absence: nothing may be read while paused
    assert p.seen == []
    p.io.pause(p.handle, CLIENT, False)
    p.io.pause(p.handle, UPSTREAM, False)
    assert _recv_exactly(p.upstream, 8) == b"SELECT 1"
    p.upstream.sendall(b"row")
    assert _recv_exactly(p.client, 3) == b"row"
    assert p.seen == [(CLIENT, b"select 1"), (UPSTREAM, b"row")]


def test_a_side_closing_is_reported_once_and_sends_still_go_out(pair: Callable[..., Pair]) -> None:
    p = pair()
    p.io.pause(p.handle, CLIENT, False)
    p.io.pause(p.handle, UPSTREAM, False)
    p.upstream.close()
    assert p.done.wait(10)
    assert p.ended == [(UPSTREAM, "upstream closed")]
    assert p.io.send(p.handle, CLIENT, b"bye")  # a last error for the client still goes
    assert _recv_exactly(p.client, 3) == b"bye"
    assert p.io.remove(p.handle) == (b"", b"")
    assert p.io.remove(p.handle) is None  # once
    assert p.io.send(p.handle, CLIENT, b"x") is False


def test_what_a_full_socket_cannot_take_waits_and_remove_hands_it_back(
    pair: Callable[..., Pair],
) -> None:
    p = pair()
    p.io.pause(p.handle, UPSTREAM, False)
    big = b"x" * (8 << 20)  # more than a socket pair buffers: the rest waits in the loop
    assert p.io.send(p.handle, CLIENT, big)
    p.upstream.sendall(b"more")  # not read while the client side has bytes waiting
    time.sleep(0.05)
    assert p.seen == []
    to_client, to_upstream = p.io.remove(p.handle)
    assert 0 < len(to_client) < len(big) and to_upstream == b""
    got = len(big) - len(to_client)
    assert _recv_exactly(p.client, got) == big[:got]


def test_a_paused_side_is_not_read_and_resumes(pair: Callable[..., Pair]) -> None:
    p = pair()
    p.io.pause(p.handle, UPSTREAM, False)
    p.client.sendall(b"held back")
    time.sleep(0.05)
    assert p.seen == []
    p.io.pause(p.handle, CLIENT, False)
    assert _recv_exactly(p.upstream, 9) == b"held back"


def test_random_sends_pauses_closes_and_removes_leave_nothing_behind(compiled: ModuleType) -> None:
    """Callbacks that send and pause from the loop's own thread, peers that close, removes at
    any point: every connection ends removed, nothing crashes. (Run against an ASan/UBSan build
    by hand: compile ``_loop.c`` with ``cbuild.compile_module(..., compiler="gcc
    -fsanitize=address,undefined -g")`` and run this under ``LD_PRELOAD`` of libasan/libubsan.)"""
    rng = random.Random(5)
    io = compiled.Loop()
    ended: list[str] = []
    try:
        for _ in range(40):
            socks = [*socket.socketpair(), *socket.socketpair()]  # client, its end, up, its end
            for sock in (socks[0], socks[2]):
                sock.setblocking(False)
            box: dict[str, int] = {}

            def on_data(side: int, data: bytes, box: dict[str, int] = box) -> None:
                io.send(box["h"], 1 - side, data * rng.randint(0, 2))
                if rng.random() < 0.05:
                    io.pause(box["h"], side, True)

            box["h"] = handle = io.add(
                socks[1].fileno(), socks[3].fileno(), on_data, lambda side, why: ended.append(why)
            )
            io.pause(handle, CLIENT, False)
            io.pause(handle, UPSTREAM, False)
            for _ in range(rng.randint(1, 20)):
                with contextlib.suppress(BlockingIOError):
                    rng.choice((socks[0], socks[2])).send(rng.randbytes(rng.randint(1, 5000)))
                if rng.random() < 0.2:
                    io.send(handle, rng.randint(0, 1), b"z" * rng.randint(0, 300_000))
                if rng.random() < 0.1:
                    io.pause(handle, rng.randint(0, 1), rng.random() < 0.5)
                for sock in (socks[0], socks[2]):
                    with contextlib.suppress(BlockingIOError):
                        sock.recv(1 << 20)
            if rng.random() < 0.3:
                socks[0].close()
            time.sleep(0.002)
            left = io.remove(handle)
            assert left is None or (isinstance(left[0], bytes) and isinstance(left[1], bytes))
            assert io.remove(handle) is None
            for sock in socks:
                sock.close()
        assert io.connections() == 0
        assert all(isinstance(why, str) and why for why in ended)  # each end says why
    finally:
        io.close()


# --------------------------------------------------------------- the gateway on each path


def test_the_compiled_loop_carries_the_connection(
    make_gateway: MakeGateway, request: pytest.FixtureRequest
) -> None:
    """The forced path is the one that runs: the loop holds the connection while it is open."""
    gw = make_gateway()
    with psycopg.connect(gw.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT name, email FROM users WHERE id = 1").fetchone() == (
            "user1",
            "[MASKED:column]",
        )
        io = gw.handle.gateway._shared.io
        if request.node.callspec.params["make_gateway"] == "compiled":
            assert io.connections() == 1
        else:
            assert io is False
    kinds = [t for t, _ in gw.events if t.startswith("db.")]
    assert kinds == ["db.query", "db.result"]
