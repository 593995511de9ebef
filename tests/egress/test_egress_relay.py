"""A tunnel's bytes after the checks, both ways of relaying them (the compiled relay thread,
``_relay.c``, and its twin in Python, asyncio protocol pipes), with the same outcome and
counts: every byte arrives in order, a client's half-close reaches the upstream while the
answer still flows back, a reader that lags pauses the sender (nothing lost), and the
``net.connect`` event counts the bytes."""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import threading
import time

import pytest
from tests.egress.conftest import Events, ProxyFactory

from airlock.egress import proxy as egress_proxy

_BIG = 12 * 1024 * 1024


def _client_hello(host: str) -> bytes:
    """A real TLS ClientHello for ``host``, as the first bytes of a tunnel must be."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname=host)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


class _AnswerAfterEof:
    """Upstream on 127.0.0.1: reads until the client's EOF, then sends back how many bytes and
    what hash it got, followed by ``_BIG`` bytes of payload, then closes."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.payload = os.urandom(_BIG)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            got = hashlib.sha256()
            size = 0
            while data := conn.recv(65536):
                got.update(data)
                size += len(data)
            conn.sendall(f"{size} {got.hexdigest()}\n".encode() + self.payload)

    def close(self) -> None:
        self.listener.close()
        self.thread.join(10)


@pytest.mark.parametrize("way", ["native", "python"])
def test_half_close_bulk_and_back_pressure(
    way: str,
    start_proxy: ProxyFactory,
    events: Events,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    if way == "native":  # the compiled relay (_relay.c)
        module = request.getfixturevalue("compiled_relay")
        monkeypatch.setattr(egress_proxy, "load", lambda: module)
    else:
        monkeypatch.setenv("AIRLOCK_EGRESS_RELAY", "python")
    upstream = _AnswerAfterEof()
    proxy = start_proxy(
        "network: {allow: [{id: raw, host: allowed.test, "
        f"ports: [{upstream.port}], local_addresses: true}}]}}"
    )
    sent = _client_hello("allowed.test") + os.urandom(3 * 1024 * 1024)
    with socket.create_connection((proxy.host, proxy.port), timeout=30) as sock:
        sock.sendall(f"CONNECT allowed.test:{upstream.port} HTTP/1.1\r\n\r\n".encode())
        answer = b""
        while not answer.endswith(b"\r\n\r\n"):
            answer += sock.recv(1)
        assert answer.startswith(b"HTTP/1.1 200")
        sock.sendall(sent)
        sock.shutdown(socket.SHUT_WR)  # upstream answers only once it sees this EOF
        time.sleep(0.3)  # read nothing for a while: the answer backs up into the proxy
        received = bytearray()
        while data := sock.recv(1 << 20):
            received += data
    upstream.close()
    line, _, payload = bytes(received).partition(b"\n")
    assert line.decode() == f"{len(sent)} {hashlib.sha256(sent).hexdigest()}"
    assert payload == upstream.payload
    [event] = events.wait_net(1)
    assert event["outcome"] == "allowed" and event["sni"] == "allowed.test"
    assert event["bytes_up"] == len(sent)
    assert event["bytes_down"] == len(received)
