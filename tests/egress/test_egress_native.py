"""The compiled tunnel relay (``_relay.c``) and its pure-Python twin, run on the same tunnels:
same outcomes and byte counts; a session's end closes every tunnel still open; 200 tunnels
leave no file descriptor behind. (``test_egress_relay.py`` runs half-close, bulk and back
pressure through both.)"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time

import pytest
from tests.egress.conftest import Events, ProxyFactory
from tests.egress.test_egress_relay import _client_hello

_HELLO = _client_hello("allowed.test")


class _Upstream:
    """Upstream on 127.0.0.1: each connection reads the ClientHello, answers ``reply`` and
    closes; with ``hold``, it keeps the connection open (and says when the peer closed)."""

    def __init__(self, reply: bytes = b"pong", hold: bool = False) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.port = self.listener.getsockname()[1]
        self.reply, self.hold = reply, hold
        self.closed_by_peer: list[bool] = []
        self.threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._one, args=(conn,), daemon=True)
            thread.start()
            self.threads.append(thread)  # started first: close() may join it at once

    def _one(self, conn: socket.socket) -> None:
        with conn:
            got = b""
            while len(got) < len(_HELLO) and (data := conn.recv(65536)):
                got += data
            conn.sendall(self.reply)
            if self.hold:
                conn.settimeout(20)
                try:
                    self.closed_by_peer.append(conn.recv(1) == b"")
                except OSError:
                    self.closed_by_peer.append(True)

    def close(self) -> None:
        self.listener.close()
        for thread in self.threads:
            thread.join(20)


def _tunnel(port: int, upstream: int, first: bytes = _HELLO) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock.sendall(f"CONNECT allowed.test:{upstream} HTTP/1.1\r\n\r\n".encode() + first)
    answer = b""
    while not answer.endswith(b"\r\n\r\n"):
        answer += sock.recv(1)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    return sock


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _network(port: int) -> str:
    return (
        "network: {allow: [{id: raw, host: allowed.test, "
        f"ports: [{port}], local_addresses: true}}]}}"
    )


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _fds_settled(expected: int) -> int:
    """The descriptor count once it reached ``expected`` (a transport closes its socket a loop
    turn after the event is recorded), or what it is after 5 s."""
    deadline = time.monotonic() + 5
    while (count := _fds()) != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return count


def test_both_relays_report_the_same_outcomes_and_counts(
    start_proxy: ProxyFactory,
    events: Events,
    monkeypatch: pytest.MonkeyPatch,
    compiled_relay: object,
) -> None:
    from airlock.egress import proxy as egress_proxy

    upstream = _Upstream(reply=os.urandom(300_000))
    seen: dict[str, list[tuple[object, ...]]] = {}
    for way in ("python", "native"):
        if way == "python":
            monkeypatch.setenv("AIRLOCK_EGRESS_RELAY", "python")
        else:
            monkeypatch.delenv("AIRLOCK_EGRESS_RELAY")
            monkeypatch.setattr(egress_proxy, "load", lambda: compiled_relay)
        proxy = start_proxy(_network(upstream.port))
        assert (proxy.native is not None) is (way == "native")
        start = len(events.net())
        with _tunnel(proxy.port, upstream.port) as sock:  # hello, then the answer and EOF
            assert _read_all(sock) == upstream.reply
        with _tunnel(proxy.port, upstream.port, _HELLO + b"more") as sock:  # bytes after hello
            sock.shutdown(socket.SHUT_WR)
            assert _read_all(sock) == upstream.reply
        with _tunnel(proxy.port, upstream.port, b"\x16\x03\x01\x00\x05hello") as sock:
            assert _read_all(sock) == b""  # not a ClientHello: closed, nothing relayed
        with _tunnel(proxy.port, upstream.port, _client_hello("other.test")) as sock:
            assert _read_all(sock) == b""  # another SNI: closed, nothing relayed
        with _tunnel(proxy.port, upstream.port, _HELLO[:50]) as sock:  # the rest comes later
            sock.sendall(_HELLO[50:])
            assert _read_all(sock) == upstream.reply
        proxy.close()
        found = events.wait_net(start + 5)[start:]
        seen[way] = sorted(  # the client may hear a tunnel's end before it is recorded
            (e["outcome"], e["bytes_up"], e["bytes_down"], e.get("sni") or "", e.get("error", ""))
            for e in found
        )
    upstream.close()
    assert seen["native"] == seen["python"]
    assert [s[1:3] for s in seen["native"] if s[0] == "allowed"] == [
        (len(_HELLO), len(upstream.reply)),
        (len(_HELLO), len(upstream.reply)),
        (len(_HELLO) + 4, len(upstream.reply)),
    ]
    refused = [s[3:] for s in seen["native"] if s[0] == "denied"]
    assert sorted(refused) == [
        ("", "not a TLS ClientHello: only TLS goes through CONNECT"),
        ("other.test", "SNI other.test differs from the CONNECT host"),
    ]


def test_session_end_closes_every_tunnel(
    relay_way: str, start_proxy: ProxyFactory, events: Events
) -> None:
    upstream = _Upstream(reply=b"hi", hold=True)
    proxy = start_proxy(_network(upstream.port))
    clients = [_tunnel(proxy.port, upstream.port) for _ in range(5)]
    for sock in clients:
        assert sock.recv(2) == b"hi"  # each tunnel is up and relaying
    proxy.close()  # the session ends
    for sock in clients:
        with sock, contextlib.suppress(ConnectionResetError):
            assert sock.recv(1) == b""  # closed by the proxy
    upstream.close()
    assert upstream.closed_by_peer == [True] * 5  # the upstream sides were closed as well
    recorded = events.wait_net(5)
    assert [(e["outcome"], e["bytes_down"]) for e in recorded] == [("allowed", 2)] * 5
    if proxy.native is not None:
        assert proxy.native.open_tunnels() == 0


def test_200_tunnels_leave_no_descriptor_behind(
    relay_way: str, start_proxy: ProxyFactory, events: Events
) -> None:
    upstream = _Upstream()
    proxy = start_proxy(_network(upstream.port))
    with _tunnel(proxy.port, upstream.port) as sock:  # warm up: the loop's own descriptors
        assert _read_all(sock) == b"pong"
    events.wait_net(1)
    before = _fds()
    for _ in range(200):
        with _tunnel(proxy.port, upstream.port) as sock:
            assert _read_all(sock) == b"pong"
    recorded = events.wait_net(201)
    assert len(recorded) == 201 and {e["outcome"] for e in recorded} == {"allowed"}
    if proxy.native is not None:
        assert proxy.native.open_tunnels() == 0
    assert _fds_settled(before) == before
    upstream.close()


def test_refused_tunnels_are_recorded_before_closed_and_leave_no_descriptor(
    relay_way: str, start_proxy: ProxyFactory, events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tunnel refused by the ClientHello check is closed only once it is recorded (the
    compiled relay hands its sockets back for that: the client never hears of a refusal the log
    lacks), and no descriptor is left open."""
    upstream = _Upstream()
    proxy = start_proxy(_network(upstream.port))
    with _tunnel(proxy.port, upstream.port) as sock:  # warm up: the loop's own descriptors
        assert _read_all(sock) == b"pong"
    events.wait_net(1)
    before = _fds()
    kind_of_events = type(events)  # conftest's class (the module may be imported twice)
    record = kind_of_events.__call__

    def slow_record(self: Events, kind: str, data: dict[str, object]) -> None:
        time.sleep(0.2)  # a slow log: a close before the record would come first
        record(self, kind, data)

    monkeypatch.setattr(kind_of_events, "__call__", slow_record)
    other = _client_hello("other.test")
    for count in range(2, 12):
        with _tunnel(proxy.port, upstream.port, other) as sock:
            assert _read_all(sock) == b""
            assert len(events.net()) == count  # already recorded when the client hears
    recorded = events.net()
    assert [e["rule_id"] for e in recorded[1:]] == ["airlock.sni"] * 10
    if proxy.native is not None:
        assert proxy.native.open_tunnels() == 0
    assert _fds_settled(before) == before
    upstream.close()
