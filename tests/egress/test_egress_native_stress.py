"""The compiled relay thread (``_relay.c``) driven directly over real TCP pairs on 127.0.0.1,
as a hostile agent would drive it: a hung-up upstream while the client does not read, and
many concurrent tunnels (random sizes, half-closes, resets, cancels, clients that stop
reading) whose bytes must arrive intact at the right peer and be counted, with no descriptor
left behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from airlock.egress.native import NativeRelay


@contextlib.contextmanager
def _listener() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0), backlog=1024) as listener:
        yield listener


def _pair(
    listener: socket.socket, rcvbuf: int = 0, peer_sndbuf: int = 0
) -> tuple[socket.socket, socket.socket]:
    """A connected TCP pair: (the test's end, the end handed to the relay)."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(listener.getsockname())
    peer, _ = listener.accept()
    if peer_sndbuf:
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, peer_sndbuf)
    return sock, peer


def _new_relay(module: ModuleType) -> tuple[Any, str]:
    """A relay and the id of its thread (the one task this process gained)."""
    before = set(os.listdir("/proc/self/task"))
    relay = module.Relay()
    (tid,) = set(os.listdir("/proc/self/task")) - before
    return relay, tid


def _cpu_ticks(tid: str) -> int:
    """User + system clock ticks the thread has run (``/proc/self/task/TID/stat``)."""
    with open(f"/proc/self/task/{tid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _tcp_state(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


_FIN_WAIT2 = 5


def test_a_hung_up_upstream_waiting_for_a_slow_client_does_not_spin(
    compiled_relay: ModuleType,
) -> None:
    """The client half-closes and stops reading; the upstream answers and closes. The
    upstream socket is then hung up (FIN both ways) while its bytes wait for the client:
    epoll reports EPOLLHUP whatever the interest, and the relay thread must still sleep
    (it spun at 100% CPU, holding the tunnel mutex, until the session ended). Not a speed
    threshold: a thread blocked in epoll_wait runs no clock tick at all."""
    relay, tid = _new_relay(compiled_relay)
    with _listener() as listener:
        client, client_side = _pair(listener, rcvbuf=4096, peer_sndbuf=4096)
        upstream_side, upstream = _pair(listener, rcvbuf=1 << 20)
        reply = os.urandom(600_000)
        try:
            handle = relay.add(client_side.fileno(), upstream_side.fileno(), b"req", b"")
            assert upstream.recv(3) == b"req"
            client.shutdown(socket.SHUT_WR)
            upstream.settimeout(20)
            assert upstream.recv(1) == b""  # the client's half-close reached the upstream
            upstream.sendall(reply)
            upstream.close()
            deadline = time.monotonic() + 20  # the upstream's FIN has reached the relay
            while _tcp_state(upstream_side) == _FIN_WAIT2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert _tcp_state(upstream_side) != _FIN_WAIT2
            start = _cpu_ticks(tid)
            time.sleep(1.0)
            ticks = _cpu_ticks(tid) - start
            assert ticks <= 5, f"the relay thread ran {ticks} ticks while nothing could move"
            assert relay.open_tunnels() == 1
            client.settimeout(20)
            got = bytearray()
            while chunk := client.recv(1 << 20):  # the client reads: everything arrives
                got += chunk
            assert bytes(got) == reply
            deadline = time.monotonic() + 20
            while not (done := relay.finished()) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert done == [(handle, 0, len(reply), "")]
        finally:
            relay.close()
            for sock in (client, client_side, upstream_side, upstream):
                sock.close()


class _Counts:
    def __init__(self) -> None:
        self.up = 0
        self.down = 0


def test_a_tunnel_that_ended_as_the_session_ends_keeps_its_counts(
    compiled_relay: ModuleType,
) -> None:
    """The relay thread ends a tunnel (upstream answered and closed) and, before the loop
    reads its report, the session ends and cancels the tunnel's task: ``cancel`` finds no
    tunnel, and the bytes moved must still reach the ``net.connect`` counts (they were lost:
    the report was dropped with the task gone)."""
    loop = asyncio.new_event_loop()
    relay = NativeRelay(compiled_relay, loop)
    counts = _Counts()
    answer = b"the answer"

    async def scenario() -> None:
        accepted: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
        accepted = loop.create_future()

        async def on_client(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            accepted.set_result((r, w))

        server = await asyncio.start_server(on_client, "127.0.0.1", 0)
        with (
            socket.create_server(("127.0.0.1", 0)) as listener,
            socket.socket() as client,
        ):
            client.setblocking(False)
            await loop.sock_connect(client, server.sockets[0].getsockname())
            reader, writer = await accepted
            up_reader, upstream = await asyncio.open_connection(*listener.getsockname())
            peer, _ = listener.accept()
            task = loop.create_task(
                relay.relay(reader, writer, up_reader, upstream, b"hello", counts)
            )
            while relay.open_tunnels() == 0:
                await asyncio.sleep(0.001)
            # from here on, no await: the loop does not read the relay's report
            with peer:
                peer.settimeout(20)
                assert peer.recv(5) == b"hello"
                peer.sendall(answer)
            client.settimeout(20)
            assert _read_all(client) == answer  # the tunnel ended in the relay thread
            deadline = time.monotonic() + 20
            while relay.open_tunnels() and time.monotonic() < deadline:
                time.sleep(0.01)
            task.cancel()  # the session ends before the report is read
            await asyncio.gather(task, return_exceptions=True)
            for w in (writer, upstream):
                w.close()
            server.close()

    try:
        loop.run_until_complete(scenario())
    finally:
        relay.close()
        loop.close()
    assert (counts.up, counts.down) == (len(b"hello"), len(answer))


def _read_all(sock: socket.socket) -> bytes:
    data = bytearray()
    while chunk := sock.recv(65536):
        data += chunk
    return bytes(data)
