"""Bad input and bad days: upstream gone, upstream dying mid-response, slow and silent clients."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from tests.gateway.http.conftest import GatewayFactory, Recorder
from tests.gateway.http.servers import ThreadedServer, upstream_app

from airlock.gateway.http import ProxySettings
from airlock.gateway.tickets import Ticket


def _auth(ticket: Ticket) -> dict[str, str]:
    return {"Authorization": f"Bearer {ticket.value}"}


def test_upstream_that_disappears_gives_502_and_the_gateway_keeps_serving(
    make_gateway: GatewayFactory, ticket: Ticket, recorder: Recorder
) -> None:
    own = ThreadedServer(upstream_app).start()
    port = own.port
    gw = make_gateway(upstream_url=own.url)
    assert httpx.get(f"{gw.url}/a", headers=_auth(ticket)).status_code == 200
    own.stop()
    r = httpx.get(f"{gw.url}/b", headers=_auth(ticket))
    assert r.status_code == 502 and r.json()["error"] == "upstream unreachable"
    event = recorder.of("http.response")[-1]
    assert event["status"] == 502 and event["upstream"] == "ConnectError"
    again = ThreadedServer(upstream_app, port=port).start()
    try:
        assert httpx.get(f"{gw.url}/c", headers=_auth(ticket)).status_code == 200
    finally:
        again.stop()


@pytest.fixture(params=[100000, 1000])
def dying_upstream(request: pytest.FixtureRequest) -> Iterator[str]:
    """Answers with Content-Length: 100000 (streamed) or 1000 (a small body, awaited whole
    with the head), sends 10 bytes, then closes the connection."""
    length = int(request.param)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(65536)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n" % length
                    + b"Content-Type: text/plain\r\n\r\n0123456789"
                )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(5)
    listener.close()


def test_upstream_dying_mid_response_is_recorded_and_the_client_sees_a_broken_body(
    make_gateway: GatewayFactory, ticket: Ticket, recorder: Recorder, dying_upstream: str
) -> None:
    gw = make_gateway(upstream_url=dying_upstream)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{gw.url}/x", headers=_auth(ticket)).raise_for_status()
    deadline = time.monotonic() + 5
    while not recorder.of("http.response") and time.monotonic() < deadline:
        time.sleep(0.02)
    event = recorder.of("http.response")[0]
    assert event["status"] == 200 and "mid-response" in event["error"]
    assert event["size"] == 10


def _raw_connection(gw_url: str) -> socket.socket:
    host, port = gw_url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)))


def test_silent_client_gets_408_and_others_are_served_meanwhile(
    make_gateway: GatewayFactory, ticket: Ticket, recorder: Recorder
) -> None:
    gw = make_gateway(settings=ProxySettings(client_timeout=0.5), record_bodies=8)
    with _raw_connection(gw.url) as sock:
        sock.sendall(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
            + f"Authorization: Bearer {ticket.value}\r\n\r\n".encode()
            + b"first bytes"
        )
        started = time.monotonic()
        assert httpx.get(f"{gw.url}/other", headers=_auth(ticket)).status_code == 200
        sock.settimeout(5)
        answer = sock.recv(65536)
        waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408") or answer == b"", answer[:100]
    assert waited < 4
    statuses = [e["status"] for e in recorder.of("http.response")]
    assert 408 in statuses
    assert [e["path"] for e in recorder.of("http.request")].count("/upload") == 1


def test_slowloris_headers_do_not_block_others(
    make_gateway: GatewayFactory, ticket: Ticket
) -> None:
    gw = make_gateway()
    slow = [_raw_connection(gw.url) for _ in range(20)]
    try:
        for sock in slow:
            sock.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        started = time.monotonic()
        for _ in range(5):
            assert httpx.get(f"{gw.url}/y", headers=_auth(ticket), timeout=5).status_code == 200
        assert time.monotonic() - started < 5
    finally:
        for sock in slow:
            sock.close()


def test_client_that_does_not_read_does_not_block_others(
    make_gateway: GatewayFactory, ticket: Ticket, recorder: Recorder
) -> None:
    gw = make_gateway()
    with _raw_connection(gw.url) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(
            f"GET /stream/{64 * 1024 * 1024} HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {ticket.value}\r\n\r\n".encode()
        )
        time.sleep(0.3)
        assert httpx.get(f"{gw.url}/y", headers=_auth(ticket), timeout=5).status_code == 200
    # the reader went away: the download is abandoned and recorded, not streamed to the end
    deadline = time.monotonic() + 10
    while len(recorder.of("http.response")) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    abandoned = [e for e in recorder.of("http.response") if e.get("error")]
    assert abandoned and abandoned[0]["size"] < 64 * 1024 * 1024


def test_garbage_request_line_gets_400_and_gateway_keeps_serving(
    make_gateway: GatewayFactory, ticket: Ticket
) -> None:
    gw = make_gateway()
    with _raw_connection(gw.url) as sock:
        sock.sendall(b"\x00\x01\x02 garbage \xff\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(100).startswith(b"HTTP/1.1 400")
    assert httpx.get(f"{gw.url}/y", headers=_auth(ticket)).status_code == 200


def test_recording_failure_refuses_with_503_and_nothing_reaches_upstream(
    make_gateway: GatewayFactory, ticket: Ticket
) -> None:
    from airlock.errors import RecordingError

    calls: list[str] = []

    class BrokenRecorder(Recorder):
        def __call__(self, type_: str, data: object) -> None:
            calls.append(type_)
            raise RecordingError("disk full")

    import tests.gateway.http.conftest as c

    gw_factory_recorder = BrokenRecorder()
    from airlock.gateway.http import start_in_thread
    from airlock.mask import Masker, MaskSettings

    base = make_gateway()
    broken = start_in_thread(
        base.gateway.proxy.config,
        masker=Masker(MaskSettings()),
        record=gw_factory_recorder,
        approve=None,
        ticket=ticket,
        environ={"API_TOKEN": c.TOKEN},
    )
    try:
        r = httpx.delete(f"{broken.url}/things/1", headers=_auth(ticket))
        assert r.status_code == 503 and "fail closed" in r.json()["error"]
        assert calls == ["http.request", "http.response"]
    finally:
        broken.close()


def test_port_in_use_is_a_clear_error(make_gateway: GatewayFactory) -> None:
    from airlock.gateway.http import HttpGatewayError

    first = make_gateway()
    port = first.address[1]
    with pytest.raises(HttpGatewayError, match=f"cannot listen on 127.0.0.1:{port}"):
        make_gateway(listen=f"127.0.0.1:{port}")
    with httpx.Client() as client:  # the first one is unaffected
        assert client.get(f"{first.url}/x").status_code == 401


def test_an_unexpected_failure_is_a_500_that_names_no_data(
    make_gateway: GatewayFactory, ticket: Ticket, recorder: Recorder
) -> None:
    from airlock.gateway.http.credentials import Injector

    gw = make_gateway()

    class Exploding(Injector):
        def apply(self, request: httpx.Request, body: bytes | None) -> None:
            raise ValueError("secret-looking detail that must not leak")

    gw.gateway.proxy._upstream._injector = Exploding()
    r = httpx.get(f"{gw.url}/x", headers=_auth(ticket))
    assert r.status_code == 500 and "ValueError" in r.json()["error"]
    assert "secret-looking" not in r.text and "secret-looking" not in recorder.text()
    assert recorder.of("http.response")[-1]["status"] == 500


def _read_response(stream: Any) -> bytes:
    """One response with a Content-Length from a buffered socket reader (``sock.makefile``)."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = stream.readline()
        assert line, "the connection closed"
        head += line
    length = int(next(v for k, v in _header_lines(head.rstrip(b"\r\n")) if k == b"content-length"))
    return head + stream.read(length)


def _header_lines(head: bytes) -> Iterator[tuple[bytes, bytes]]:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        yield name.strip().lower(), value.strip()


def test_expect_100_continue_is_answered_before_the_body_is_sent(
    make_gateway: GatewayFactory, ticket: Ticket, recorder: Recorder
) -> None:
    gw = make_gateway()
    with _raw_connection(gw.url) as sock:
        sock.settimeout(5)
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n"
            + f"Authorization: Bearer {ticket.value}\r\n\r\n".encode()
        )
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello")
        assert _read_response(sock.makefile("rb")).startswith(b"HTTP/1.1 200")
    assert recorder.of("http.request")[0]["body"] == "hello"


def test_pipelined_requests_are_answered_in_order_on_one_connection(
    make_gateway: GatewayFactory, ticket: Ticket, recorder: Recorder
) -> None:
    gw = make_gateway(rules=[{"id": "no-b", "http": {"path": "/b"}, "action": "deny"}])
    auth = f"Authorization: Bearer {ticket.value}\r\n".encode()
    with _raw_connection(gw.url) as sock:
        sock.settimeout(5)
        sock.sendall(
            b"".join(
                b"GET /%s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (p, auth) for p in (b"a", b"b", b"c")
            )
        )
        stream = sock.makefile("rb")
        statuses = [_read_response(stream).split(b" ", 2)[1] for _ in range(3)]
    assert statuses == [b"200", b"403", b"200"]
    assert [e["path"] for e in recorder.of("http.request")] == ["/a", "/b", "/c"]


def test_the_gateway_without_httptools_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import sys

    from airlock.errors import UsageError

    monkeypatch.setitem(sys.modules, "httptools", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "airlock.gateway.h1")
    with pytest.raises(UsageError, match="httptools") as caught:
        importlib.import_module("airlock.gateway.h1")
    assert "reinstall airlock-ci" in caught.value.hint


def test_a_request_sent_one_byte_at_a_time_is_read_whole(
    make_gateway: GatewayFactory, ticket: Ticket, recorder: Recorder
) -> None:
    gw = make_gateway()
    raw = (
        b"POST /echo?q=1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        + f"Authorization: Bearer {ticket.value}\r\n\r\n".encode()
        + b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    with _raw_connection(gw.url) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(5)
        for i in range(len(raw)):
            sock.sendall(raw[i : i + 1])
        assert _read_response(sock.makefile("rb")).startswith(b"HTTP/1.1 200")
    (request,) = recorder.of("http.request")
    assert (request["path"], request["query"], request["body"]) == ("/echo", "q=1", "abcde")


def test_headers_past_the_limit_get_431_and_others_are_served(
    make_gateway: GatewayFactory, ticket: Ticket
) -> None:
    gw = make_gateway()
    with _raw_connection(gw.url) as sock:
        sock.settimeout(5)
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: x\r\n")
        with contextlib.suppress(ConnectionError):  # the gateway may close while we still send
            for _ in range(80):
                sock.sendall(b"X-Filler: " + b"f" * 1000 + b"\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 431")
    assert httpx.get(f"{gw.url}/y", headers=_auth(ticket)).status_code == 200
