"""The compiled relay thread (``_relay.c``) driven directly over real TCP pairs on 127.0.0.1,
as a hostile agent would drive it: a hung-up upstream while the client does not read, and
many concurrent tunnels (random sizes, half-closes, resets, cancels, clients that stop
reading) whose bytes must arrive intact at the right peer and be counted, with no descriptor
left behind."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import selectors
import socket
import struct
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
            assert done == [(handle, 0, len(reply), "", 0, None, (-1, -1))]  # no hello check
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
            _, writer = await accepted
            _, upstream = await asyncio.open_connection(*listener.getsockname())
            peer, _ = listener.accept()
            task = loop.create_task(
                relay.relay(writer.transport, upstream.transport, b"hello", b"", counts)
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


_KINDS = ("plain", "half", "slow", "reset", "cancel", "early")


class _End:
    """One test end of a tunnel (client or upstream): what it sends, what it received."""

    def __init__(self, sock: socket.socket, out: bytes) -> None:
        sock.setblocking(False)
        self.sock, self.out, self.off = sock, memoryview(out), 0
        self.got = hashlib.sha256()
        self.count = 0
        self.eof = self.closed = self.shut = False
        self.read_after = 0.0

    def events(self, now: float) -> int:
        if self.closed:
            return 0
        ev = selectors.EVENT_READ if not self.eof and now >= self.read_after else 0
        return ev | (selectors.EVENT_WRITE if self.off < len(self.out) else 0)

    def step(self, events: int, limit: int) -> None:
        if events & selectors.EVENT_WRITE and self.off < min(limit, len(self.out)):
            with contextlib.suppress(BlockingIOError):
                self.off += self.sock.send(self.out[self.off : min(limit, len(self.out))])
        if events & selectors.EVENT_READ:
            try:
                data = self.sock.recv(262144)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            self.got.update(data)
            self.count += len(data)
            self.eof = not data


class _Tunnel:
    """A tunnel through the relay with random bytes each way and one way of ending."""

    def __init__(self, rng: random.Random, relay: Any, listener: socket.socket) -> None:
        self.kind = rng.choice(_KINDS)
        self.up = rng.randbytes(int(min(1 << 20, rng.paretovariate(0.7) * 2000)))
        self.down = rng.randbytes(int(min(1 << 20, rng.paretovariate(0.7) * 2000)))
        self.first = self.up[: rng.randint(0, min(600, len(self.up)))]  # "the ClientHello"
        small = 4096 if self.kind == "slow" else 0  # small buffers: back pressure sooner
        client, self.client_side = _pair(listener, rcvbuf=small, peer_sndbuf=small)
        self.upstream_side, upstream = _pair(listener)
        self.client = _End(client, self.up[len(self.first) :])
        self.upstream = _End(upstream, self.down)
        if self.kind == "slow":  # the client stops reading a while: back pressure
            self.client.read_after = time.monotonic() + rng.uniform(0.1, 0.6)
        self.reset_at = rng.randint(0, len(self.client.out)) if self.kind == "reset" else -1
        self.cancel_at = time.monotonic() + rng.uniform(0, 0.3) if self.kind == "cancel" else 0
        self.handle: int = relay.add(
            self.client_side.fileno(), self.upstream_side.fileno(), self.first, b""
        )
        if self.kind == "early":  # the caller may close its own copies at once
            self.release()
        self.report: tuple[int, int, str] | None = None
        self.cancelled = False

    def release(self) -> None:
        self.client_side.close()
        self.upstream_side.close()

    def advance(self, relay: Any, now: float) -> None:
        client, upstream = self.client, self.upstream
        if self.kind == "half" and not client.shut and client.off == len(client.out):
            client.shut = True
            client.sock.shutdown(socket.SHUT_WR)
        if self.kind == "reset" and not client.closed and client.off >= self.reset_at:
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.sock.close()
            client.closed = True
        if self.cancel_at and now >= self.cancel_at and self.report is None:
            self.cancel_at = 0
            self.cancelled = True
            relay.cancel(self.handle)
            self.release()
        # The upstream closes once it sent all and got all (and the client's EOF after a
        # half-close): its EOF ends the tunnel.
        if (
            self.kind in ("plain", "half", "slow", "early")
            and not upstream.closed
            and upstream.off == len(upstream.out)
            and upstream.count == len(self.up)
            and (upstream.eof or self.kind != "half")
        ):
            upstream.sock.close()
            upstream.closed = True
        if self.report is not None:
            self.release()

    def over(self) -> bool:
        ended = self.report is not None or self.cancelled
        return ended and all(e.closed or e.eof for e in (self.client, self.upstream))

    def problems(self) -> list[str]:
        whole = self.kind in ("plain", "half", "slow", "early")
        found = []
        client, upstream = self.client, self.upstream
        if whole and self.report != (len(self.up) - len(self.first), len(self.down), ""):
            found.append(f"{self.kind}: reported {self.report}")
        down_seen = self.down if whole else self.down[: client.count]
        up_seen = self.up if whole else self.up[: upstream.count]
        if client.got.digest() != hashlib.sha256(down_seen).digest():
            found.append(f"{self.kind}: the client got {client.count} wrong bytes")
        if upstream.got.digest() != hashlib.sha256(up_seen).digest():
            found.append(f"{self.kind}: the upstream got {upstream.count} wrong bytes")
        return found


def test_many_concurrent_tunnels_arrive_intact_and_are_counted(
    compiled_relay: ModuleType,
) -> None:
    """240 tunnels, 60 at a time: random sizes each way (heavy tail up to 1 MiB), half-closes,
    resets (SO_LINGER 0), cancels while busy, clients that stop reading, callers closing
    their copies at once. Every byte arrives at its own peer (hashes), every tunnel that
    ended is reported once with its counts, and no descriptor or tunnel is left."""
    rng = random.Random(5)
    relay, _tid = _new_relay(compiled_relay)
    sel = selectors.DefaultSelector()
    sel.register(relay.fileno(), selectors.EVENT_READ, None)
    live: dict[int, _Tunnel] = {}
    problems: list[str] = []
    made = finished = 0
    with _listener() as listener:
        fds_before = len(os.listdir("/proc/self/fd"))
        deadline = time.monotonic() + 120
        while (made < 240 or live) and time.monotonic() < deadline:
            while made < 240 and len(live) < 60:
                tunnel = _Tunnel(rng, relay, listener)
                live[tunnel.handle] = tunnel
                made += 1
            now = time.monotonic()
            for tunnel in live.values():
                for end in (tunnel.client, tunnel.upstream):
                    with contextlib.suppress(KeyError, ValueError):
                        sel.unregister(end.sock)
                    if events := end.events(now):
                        sel.register(end.sock, events, (tunnel, end))
            for key, events in sel.select(0.02):
                if key.data is None:
                    for handle, up, down, reason, *_ in relay.finished():
                        tunnel = live[handle]  # a report for a tunnel of this test
                        assert tunnel.report is None, "reported twice"
                        tunnel.report = (up, down, reason)
                        finished += 1
                else:
                    tunnel, end = key.data
                    limit = (
                        tunnel.reset_at
                        if end is tunnel.client and tunnel.reset_at >= 0
                        else len(end.out)
                    )
                    end.step(events, limit)
            now = time.monotonic()
            for handle, tunnel in list(live.items()):
                tunnel.advance(relay, now)
                if tunnel.over():
                    problems += tunnel.problems()
                    for end in (tunnel.client, tunnel.upstream):
                        with contextlib.suppress(KeyError, ValueError):
                            sel.unregister(end.sock)
                        end.sock.close()
                    del live[handle]
        assert not live, f"{len(live)} tunnels never ended"
        assert relay.open_tunnels() == 0
        assert problems == []
        assert finished >= 240 * 3 // 5  # all but the cancelled ones and some resets
        assert len(os.listdir("/proc/self/fd")) == fds_before
    sel.close()
    relay.close()
