"""The compiled relay reads the ClientHello's SNI itself (``_relay.c`` ``parse_hello``); the
Python reader (``tls.py``) stays the fallback. Both must say the same of the same bytes: every
prefix of real ClientHellos, hellos split over records, oversized ones, and mutated or random
bytes (hypothesis). A tunnel whose ClientHello never completes is closed by the relay thread
after the timeout and recorded as the Python path records it."""

from __future__ import annotations

import socket
import ssl
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.egress.conftest import Events, ProxyFactory
from tests.egress.test_egress_native import _HELLO, _network, _read_all, _tunnel, _Upstream

from airlock.egress.tls import MAX_HELLO_BYTES, ClientHelloReader

_MORE, _NOT_TLS, _MALFORMED, _OK = 0, 1, 2, 3


def _python(data: bytes) -> tuple[int, str | None]:
    hello = ClientHelloReader().feed(data)
    if hello is None:
        return _MORE, None
    if not hello.tls:
        return _NOT_TLS, None
    if hello.malformed:
        return _MALFORMED, None
    return _OK, hello.sni


def _hello(name: str | None) -> bytes:
    context = ssl.create_default_context()
    if name is None:
        context.check_hostname = False
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def _records(body: bytes, cut: int) -> bytes:
    """``body`` (a handshake message) in two TLS records, cut at ``cut``."""
    parts = (body[:cut], body[cut:])
    return b"".join(b"\x16\x03\x01" + len(p).to_bytes(2, "big") + p for p in parts)


def _with_sni(raw_name: bytes) -> bytes:
    """A real ClientHello whose host_name bytes are replaced by ``raw_name`` (same length)."""
    hello = bytearray(_hello("x" * len(raw_name)))
    at = hello.index(b"x" * len(raw_name))
    hello[at : at + len(raw_name)] = raw_name
    return bytes(hello)


_NAMES = ["api.example.com", "a-b.c_d.example", "UPPER.Example.COM", ".".join(["x" * 60] * 4), None]


@pytest.mark.parametrize("name", _NAMES)
def test_every_prefix_of_a_real_hello(compiled_relay: ModuleType, name: str | None) -> None:
    hello = _hello(name)
    for end in range(len(hello) + 1):
        assert compiled_relay.parse_hello(hello[:end]) == _python(hello[:end]), end
    assert compiled_relay.parse_hello(hello) == (_OK, name.lower() if name else None)


def test_split_records_odd_names_and_size_bounds(compiled_relay: ModuleType) -> None:
    body = _hello("split.example")[5:]
    cases = [_records(body, cut) for cut in (1, 3, 4, 40, len(body) - 1)]
    cases += [_with_sni(name) for name in (b"trail..", b"a b.c", b"\xc3\xa9t\xc3\xa9", b"A.B")]
    cases += [
        b"\x16\x03\x01" + b"\xff\xff" + b"\x01" * 70_000,  # a record past the bound
        b"\x16\x03\x01\x00\x04\x01\xff\xff\xff" + (b"\x16\x03\x01\xff\xff" + b"\0" * 65535) * 2,
        b"\x17\x03\x03\x00\x01x",  # application data
        b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",  # a ServerHello
        b"GET / HTTP/1.1\r\n\r\n",
        b"",
    ]
    for data in cases:
        assert compiled_relay.parse_hello(data) == _python(data), data[:40]
    assert compiled_relay.parse_hello(_with_sni(b"trail..")) == (_OK, "trail")
    assert compiled_relay.parse_hello(_with_sni(b"A.B")) == (_OK, "a.b")
    assert compiled_relay.parse_hello(_with_sni(b"a b.c")) == (_MALFORMED, None)
    incomplete = b"\x16\x03\x01\x00\x04\x01\xff\xff\xff" + b"\x16\x03\x01\x40\x00" + b"\0" * 0x4000
    assert compiled_relay.parse_hello(incomplete * 4)[0] == _MALFORMED  # past MAX_HELLO_BYTES
    assert len(incomplete * 4) > MAX_HELLO_BYTES


_REAL = _hello("mutate.example")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(0, len(_REAL) - 1), st.integers(0, 255)), max_size=6),
    st.integers(0, len(_REAL)),
)
def test_mutated_hellos(compiled_relay: ModuleType, flips: list[tuple[int, int]], end: int) -> None:
    data = bytearray(_REAL)
    for at, value in flips:
        data[at] = value
    assert compiled_relay.parse_hello(bytes(data[:end])) == _python(bytes(data[:end]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_random_bytes_after_a_record_header(compiled_relay: ModuleType, data: bytes) -> None:
    for prefix in (b"\x16\x03\x01", b"\x16\x03\x01" + len(data).to_bytes(2, "big") + b"\x01"):
        assert compiled_relay.parse_hello(prefix + data) == _python(prefix + data)


def test_a_tunnel_without_a_hello_is_closed_after_the_timeout(
    relay_way: str, start_proxy: ProxyFactory, events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airlock.egress import connection

    monkeypatch.setattr(connection, "_HELLO_TIMEOUT", 0.2)
    upstream = socket.create_server(("127.0.0.1", 0))
    port = upstream.getsockname()[1]
    proxy = start_proxy(
        "network: {allow: [{id: raw, host: allowed.test, "
        f"ports: [{port}], local_addresses: true}}]}}"
    )
    assert (proxy.native is not None) is (relay_way == "native")
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=20) as sock:
        sock.sendall(f"CONNECT allowed.test:{port} HTTP/1.1\r\n\r\n".encode() + b"\x16\x03\x01")
        answer = b""
        while not answer.endswith(b"\r\n\r\n"):
            answer += sock.recv(1)
        assert answer.startswith(b"HTTP/1.1 200")
        assert sock.recv(1) == b""  # closed by the proxy, nothing relayed
    accepted, _ = upstream.accept()
    with accepted, upstream:
        accepted.settimeout(5)
        assert accepted.recv(1) == b""  # the upstream got nothing, then the close
    (event,) = events.wait_net(1)
    # both ways record it alike: the CONNECT was allowed, the tunnel timed out unrelayed
    assert (event["outcome"], event["error"], event["bytes_up"]) == ("allowed", "timed out", 0)
    assert event["rule_id"] == "raw" and "sni" not in event


def test_silent_tunnels_time_out_while_others_relay(
    compiled_relay: ModuleType,
    start_proxy: ProxyFactory,
    events: Events,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Several tunnels wait for a ClientHello that never comes (the relay thread's one timer
    serves them all, re-armed for the next); a tunnel opened meanwhile is relayed; each silent
    one ends "timed out", unrelayed, and the relay holds none afterwards."""
    from airlock.egress import connection
    from airlock.egress import proxy as egress_proxy

    monkeypatch.setattr(egress_proxy, "load", lambda: compiled_relay)
    monkeypatch.setattr(connection, "_HELLO_TIMEOUT", 0.3)
    upstream = _Upstream()
    proxy = start_proxy(_network(upstream.port))
    assert proxy.native is not None
    silent = [_tunnel(proxy.port, upstream.port, b"") for _ in range(4)]
    with _tunnel(proxy.port, upstream.port) as sock:
        assert _read_all(sock) == b"pong"
    for sock in silent:
        with sock:
            assert _read_all(sock) == b""
    recorded = events.wait_net(5)
    outcomes = sorted((e.get("error", ""), e["bytes_up"]) for e in recorded)
    assert outcomes == [("", len(_HELLO))] + [("timed out", 0)] * 4
    assert proxy.native.open_tunnels() == 0
    upstream.close()


def test_a_trickled_hello_is_admitted(
    relay_way: str, start_proxy: ProxyFactory, events: Events
) -> None:
    """A ClientHello sent a byte at a time (the compiled relay parses again only when a record
    can have completed) is checked and relayed like one sent whole."""
    upstream = _Upstream()
    proxy = start_proxy(_network(upstream.port))
    with _tunnel(proxy.port, upstream.port, b"") as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(_HELLO)):
            sock.send(_HELLO[i : i + 1])
        assert _read_all(sock) == b"pong"
    (event,) = events.wait_net(1)
    assert (event["outcome"], event["sni"], event["bytes_up"]) == (
        "allowed",
        "allowed.test",
        len(_HELLO),
    )
    upstream.close()
