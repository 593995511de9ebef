"""Attacks on the lean HTTP/1.1 front of the gateways (``gateway/h1``): malformed bytes from a
hostile agent (the client side) and from a hostile or buggy upstream (the pooled keep-alive
client), over real sockets on 127.0.0.1.

What is asserted from outside: what the upstream received (exactly the judged requests), what
the client got (one response per request, none belonging to another), what was recorded.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httptools
import pytest
from tests.gateway.http.conftest import Recorder
from tests.support.raw_http import Parsed, RawUpstream

from airlock.gate import Operation
from airlock.gateway import serving
from airlock.gateway.http import ThreadedHttpGateway, start_in_thread
from airlock.gateway.tickets import Ticket
from airlock.mask import Masker, MaskSettings
from airlock.policy.gateways import HttpGatewayConfig
from airlock.policy.guardrails import GuardrailRule

TOKEN = "upstream-held-token-" + "h" * 24
RULES: list[dict[str, Any]] = [
    {"id": "no-delete", "http": {"methods": ["DELETE"], "path": "/items/*"}, "action": "deny"},
    {"id": "no-admin", "http": {"path": "/admin/**"}, "action": "deny"},
]
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 2\r\n\r\nOK"


Gateway = Callable[..., tuple[ThreadedHttpGateway, Recorder]]


@pytest.fixture
def ticket() -> Ticket:
    return Ticket.issue("session-1", "api")


@pytest.fixture
def gateway(ticket: Ticket) -> Iterator[Gateway]:
    started: list[ThreadedHttpGateway] = []

    def start(
        upstream: str, rules: list[dict[str, Any]] = RULES, approve: Any = None, **fields: Any
    ) -> Any:
        recorder = Recorder()
        config = HttpGatewayConfig.model_validate(
            {
                "name": "api",
                "kind": "http",
                "upstream": upstream,
                "credential": {"env": {"bearer": "API_TOKEN"}},
                **fields,
            }
        )
        gw = start_in_thread(
            config,
            masker=Masker(MaskSettings()),
            record=recorder,
            approve=approve,
            ticket=ticket,
            guardrails=[GuardrailRule.model_validate(r) for r in rules],
            environ={"API_TOKEN": TOKEN},
        )
        started.append(gw)
        return gw, recorder

    yield start
    for gw in started:
        gw.close()


@pytest.fixture
def upstreams() -> Iterator[Callable[[Callable[[int, dict[str, Any]], bytes]], RawUpstream]]:
    made: list[RawUpstream] = []

    def make(answer: Callable[[int, dict[str, Any]], bytes]) -> RawUpstream:
        made.append(RawUpstream(answer))
        return made[-1]

    yield make
    for upstream in made:
        upstream.close()


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.settimeout(10)
    return sock


def _responses(sock: socket.socket, count: int = 99) -> tuple[list[dict[str, Any]], str]:
    """Read up to ``count`` whole responses (or until the server closes or goes quiet) with a
    strict parser; returns them, and why reading stopped if the bytes were not HTTP."""
    seen = Parsed()
    parser = httptools.HttpResponseParser(seen)
    seen.parser = parser
    error = ""
    while sum(m["complete"] for m in seen.messages) < count:
        try:
            data = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not data:
            break
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            error = f"{type(exc).__name__}: {exc}"
            break
    return seen.messages, error


def _auth(ticket: Ticket) -> bytes:
    return b"Authorization: Bearer %s\r\n" % ticket.value.encode()


def _get(path: bytes, ticket: Ticket, extra: bytes = b"") -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: gw\r\n%s%s\r\n" % (path, _auth(ticket), extra)


# ---------------------------------------------------------------------------- upstream side


def test_upstream_bytes_after_a_response_never_reach_the_client(
    gateway: Gateway, upstreams: Any, ticket: Ticket
) -> None:
    """A response followed by more bytes (a Content-Length lie, a second response): the client
    must get the first response as framed, and its next request its own response."""
    forged = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nFORGED"
    inner = b"XX" + forged
    poison = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (
        len(inner),
        inner,
    )
    real = b"HTTP/1.1 201 Created\r\nContent-Type: application/octet-stream\r\nContent-Length: 4\r\n\r\nREAL"
    upstream = upstreams(lambda n, _: OK + poison if n == 0 else real)
    gw, _ = gateway(upstream.url)
    with _connect(gw.url) as sock:
        sock.sendall(_get(b"/a", ticket, b"Connection: close\r\n"))
        first, error = _responses(sock)  # all the server sends before it closes
    with _connect(gw.url) as sock:
        sock.sendall(_get(b"/b", ticket))
        second, _ = _responses(sock, 1)
    assert upstream.urls() == [b"/a", b"/b"]
    assert [m["body"] for m in first] == [b"OK"], "bytes after the response reached the client"
    assert error == ""
    assert [(m["status"], m["body"]) for m in second] == [(201, b"REAL")]


HEAD_BODY = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON"
BUGGY: dict[str, tuple[bytes, bytes, list[tuple[int, bytes]]]] = {
    # name: (first request line, upstream's first answer, what the client gets for it)
    "head-with-body": (b"HEAD /a", HEAD_BODY, [(200, b"")]),
    "early-hints": (
        b"GET /a",
        b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + OK,
        [(200, b"OK")],
    ),
    "continue-unasked": (b"GET /a", b"HTTP/1.1 100 Continue\r\n\r\n" + OK, [(200, b"OK")]),
    "204-with-body": (
        b"GET /a",
        b"HTTP/1.1 204 No Content\r\nContent-Length: 6\r\n\r\nPOISON",
        [(204, b"")],
    ),
    "304-with-body": (
        b"GET /a",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 6\r\n\r\nPOISON",
        [(304, b"")],
    ),
    "content-length-short": (
        b"GET /a",
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nOKPOISON",
        [(200, b"OK")],
    ),
}


@pytest.mark.parametrize("case", list(BUGGY))
def test_a_buggy_upstream_answer_never_becomes_the_next_answer(
    gateway: Gateway, upstreams: Any, ticket: Ticket, case: str
) -> None:
    line, answer, expected = BUGGY[case]
    real = b"HTTP/1.1 201 Created\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\nREAL"
    upstream = upstreams(lambda n, _: answer if n == 0 else real)
    gw, _ = gateway(upstream.url)
    with _connect(gw.url) as sock:
        sock.sendall(
            b"%s HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n%s\r\n" % (line, _auth(ticket))
        )
        first, _ = _responses(sock)
    for _ in range(2):  # the pooled connection, if it was kept, answers the next request
        with _connect(gw.url) as sock:
            sock.sendall(_get(b"/b", ticket, b"Connection: close\r\n"))
            second, _ = _responses(sock)
        assert [(m["status"], m["body"]) for m in second] == [(201, b"REAL")]
    # the answer as framed, or a 502 (refused whole): never the stray bytes, never a leak
    assert [(m["status"], m["body"]) for m in first] == expected or [
        m["status"] for m in first
    ] == [502]
    assert upstream.urls() == [b"/a", b"/b", b"/b"]


# ---------------------------------------------------------------------------- client side


def test_bytes_past_a_content_length_are_a_second_request_judged_on_their_own(
    gateway: Gateway, upstreams: Any, ticket: Ticket
) -> None:
    upstream = upstreams(lambda n, _: OK)
    gw, recorder = gateway(upstream.url)
    smuggled = b"DELETE /items/1 HTTP/1.1\r\nHost: gw\r\n%s\r\n" % _auth(ticket)
    first = b"POST /items HTTP/1.1\r\nHost: gw\r\n%sContent-Length: 5\r\n\r\nabcde" % _auth(ticket)
    with _connect(gw.url) as sock:
        sock.sendall(first + smuggled + _get(b"/last", ticket, b"Connection: close\r\n"))
        got, _ = _responses(sock)
    assert [m["status"] for m in got] == [200, 403, 200]
    assert upstream.urls() == [b"/items", b"/last"]
    assert [r["body"] for r in upstream.requests] == [b"abcde", b""]
    decisions = [d.get("action") for d in recorder.of("guardrail.decision")]
    assert "deny" in decisions


SMUGGLE_AFTER = b"DELETE /items/1 HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\n\r\n"
UPGRADES: dict[str, bytes] = {
    "websocket": b"GET /items HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    "h2c-with-body": b"POST /items HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade, HTTP2-Settings\r\n"
    b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nContent-Length: 3\r\n",
    "connect": b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n",
}


@pytest.mark.parametrize("case", list(UPGRADES))
def test_bytes_after_an_upgrade_request_are_never_forwarded(
    gateway: Gateway, upstreams: Any, ticket: Ticket, case: str
) -> None:
    """After ``Upgrade:``/``CONNECT`` the rest of the stream is another protocol's: neither
    judged as HTTP nor passed through (the gateway strips Upgrade and closes)."""
    upstream = upstreams(lambda n, _: OK)
    gw, _ = gateway(upstream.url)
    body = b"abc" if b"Content-Length: 3" in UPGRADES[case] else b""
    with _connect(gw.url) as sock:
        sock.sendall(UPGRADES[case] + _auth(ticket) + b"\r\n" + body + SMUGGLE_AFTER)
        got, _ = _responses(sock)
    assert len(got) <= 1
    assert all(m["method"] != b"DELETE" for m in upstream.requests)
    assert all(b"DELETE" not in m["body"] for m in upstream.requests)
    assert all(b"upgrade" not in dict(m["headers"]) for m in upstream.requests)


HOLD = [*RULES, {"id": "hold", "http": {"path": "/held"}, "action": "require_approval"}]


class Approver:
    """Answers ``answer`` once released; counts what it was asked."""

    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.asked: list[Operation] = []
        self.called = threading.Event()
        self.release = threading.Event()

    async def __call__(self, op: Operation) -> bool:
        self.asked.append(op)
        self.called.set()
        await asyncio.to_thread(self.release.wait, 20)
        return self.answer


@pytest.mark.parametrize("answer", [True, False], ids=["approved", "denied"])
def test_pipelined_requests_wait_behind_a_held_one_and_are_judged_on_their_own(
    gateway: Gateway, upstreams: Any, ticket: Ticket, answer: bool
) -> None:
    upstream = upstreams(lambda n, _: OK)
    approver = Approver(answer)
    gw, _ = gateway(upstream.url, rules=HOLD, approve=approver)
    held = b"POST /held HTTP/1.1\r\nHost: gw\r\n%sContent-Length: 1\r\n\r\nx" % _auth(ticket)
    denied = b"DELETE /items/1 HTTP/1.1\r\nHost: gw\r\n%s\r\n" % _auth(ticket)
    last = _get(b"/last", ticket, b"Connection: close\r\n")
    with _connect(gw.url) as sock:
        sock.sendall(held + _get(b"/after", ticket) + denied + last)
        assert approver.called.wait(10)
        time.sleep(0.3)  # room for a request that would overtake the held one
        before = upstream.urls()
        approver.release.set()
        got, error = _responses(sock)
    assert before == []
    assert len(approver.asked) == 1
    assert error == ""
    assert [m["status"] for m in got] == [200 if answer else 403, 200, 403, 200]
    assert upstream.urls() == ([b"/held"] if answer else []) + [b"/after", b"/last"]


def test_a_body_cut_while_held_is_never_forwarded(
    gateway: Gateway, upstreams: Any, ticket: Ticket
) -> None:
    upstream = upstreams(lambda n, _: OK)
    approver = Approver(True)
    approver.release.set()
    gw, recorder = gateway(upstream.url, rules=HOLD, approve=approver)
    with _connect(gw.url) as sock:
        sock.sendall(
            b"POST /held HTTP/1.1\r\nHost: gw\r\n%sContent-Length: 100\r\n\r\n0123456789"
            % _auth(ticket)
        )
    deadline = time.monotonic() + 10
    while not recorder.of("http.response") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [r["status"] for r in recorder.of("http.response")] == [499]
    assert upstream.requests == [] and approver.asked == []


def test_expect_continue_on_a_denied_request_sends_nothing_upstream(
    gateway: Gateway, upstreams: Any, ticket: Ticket
) -> None:
    upstream = upstreams(lambda n, _: OK)
    gw, _ = gateway(upstream.url)
    with _connect(gw.url) as sock:
        sock.sendall(
            b"DELETE /items/1 HTTP/1.1\r\nHost: gw\r\n%sExpect: 100-continue\r\n"
            b"Connection: close\r\nContent-Length: 5\r\n\r\n" % _auth(ticket)
        )
        first = sock.recv(65536)
        if first.startswith(b"HTTP/1.1 100"):
            sock.sendall(b"abcde")
            first = first.partition(b"\r\n\r\n")[2] or sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 403")
    assert upstream.requests == []


def test_http10_keep_alive_requests_are_each_judged(
    gateway: Gateway, upstreams: Any, ticket: Ticket
) -> None:
    upstream = upstreams(lambda n, _: OK)
    gw, _ = gateway(upstream.url)
    auth = _auth(ticket)
    with _connect(gw.url) as sock:
        sock.sendall(
            b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n%s\r\n" % auth
            + b"DELETE /items/1 HTTP/1.0\r\nConnection: keep-alive\r\n%s\r\n" % auth
            + b"GET /b HTTP/1.0\r\n%s\r\n" % auth
        )
        got, _ = _responses(sock)
    assert [m["status"] for m in got][:2] == [200, 403]
    assert b"/items/1" not in upstream.urls()


def test_trailers_are_bounded_like_headers(
    gateway: Gateway, upstreams: Any, ticket: Ticket
) -> None:
    """Trailer fields after a chunked body are header lines too: past the head limit the
    request is refused, else a client grows the gateway's memory without end."""
    upstream = upstreams(lambda n, _: OK)
    gw, _ = gateway(upstream.url)
    with _connect(gw.url) as sock:
        sock.sendall(
            b"POST /items HTTP/1.1\r\nHost: gw\r\n%sConnection: close\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n" % _auth(ticket)
        )
        line = b"X-T: " + b"a" * 1000 + b"\r\n"
        try:
            for _ in range(2000):  # 2 MB of trailer fields, 30 times the head limit
                sock.sendall(line)
            sock.sendall(b"\r\n")
        except OSError:
            pass  # refused and closed mid-way: what the fix does
        got, _ = _responses(sock)
    assert [m["status"] for m in got] in ([431], [400])
    assert upstream.requests == []


def test_a_head_larger_than_the_limit_is_refused_however_it_arrives(
    gateway: Gateway, upstreams: Any, ticket: Ticket
) -> None:
    upstream = upstreams(lambda n, _: OK)
    gw, _ = gateway(upstream.url)
    big = b"X-Big: " + b"b" * 60_000 + b"\r\n"
    with _connect(gw.url) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: gw\r\n%s" % _auth(ticket) + big)
        time.sleep(0.2)
        sock.sendall(big + b"Connection: close\r\n\r\n")  # 120 kB in all: past 64 kB
        got, _ = _responses(sock)
    assert [m["status"] for m in got] == [431]
    assert upstream.requests == []


def test_a_request_head_sent_a_byte_at_a_time_does_not_hold_a_connection_forever(
    gateway: Gateway, upstreams: Any, ticket: Ticket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slowloris: an idle connection is closed after the keep-alive time; one that sent the
    start of a request and then a byte now and then must be closed too."""
    monkeypatch.setattr(serving, "_KEEP_ALIVE", 0.5)
    upstream = upstreams(lambda n, _: OK)
    gw, _ = gateway(upstream.url)
    with _connect(gw.url) as idle, _connect(gw.url) as slow:
        slow.sendall(b"GET /")
        deadline = time.monotonic() + 5
        closed = False
        while time.monotonic() < deadline and not closed:
            try:
                slow.sendall(b"a")
            except OSError:
                closed = True
            time.sleep(0.2)
        assert idle.recv(100) == b""  # the keep-alive limit works for a silent connection
        assert closed


def test_requests_pipelined_behind_a_slow_one_are_not_all_queued() -> None:
    """A client pipelines 3 000 tiny requests (54 kB, one read) behind one the app is still
    answering: the server may queue a few, not build them all in memory."""
    from airlock.gateway.h1.server import H1Server

    flood = b"GET /held HTTP/1.1\r\n\r\n" + b"GET / HTTP/1.1\r\n\r\n" * 3_000

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == "/held":
            await asyncio.sleep(30)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def main() -> int:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        server = H1Server(app)
        await server.start(listener)
        _, writer = await asyncio.open_connection(*listener.getsockname())
        writer.write(flood)
        await writer.drain()
        for _ in range(50):  # until the server has read what it will read
            await asyncio.sleep(0.02)
        queued = max((len(c.pipeline) for c in server.connections), default=0)
        writer.close()
        await server.stop(0)
        return queued

    assert asyncio.run(main()) <= 64


def test_a_malformed_pipelined_request_never_answers_for_the_one_before_it(
    gateway: Gateway, upstreams: Any, ticket: Ticket
) -> None:
    def slow(n: int, _: dict[str, Any]) -> bytes:
        time.sleep(0.3)  # the first request is still upstream when the second is parsed
        return OK

    upstream = upstreams(slow)
    gw, recorder = gateway(upstream.url)
    with _connect(gw.url) as sock:
        sock.sendall(_get(b"/first", ticket) + b"GET /x HTTP/1.1\r\nBad Header: 1\r\n\r\n")
        got, _ = _responses(sock)
    deadline = time.monotonic() + 10
    while not recorder.of("http.response") and time.monotonic() < deadline:
        time.sleep(0.05)  # the first request is carried through, answered or not
    # Either the first request is carried through and its answer comes first, or it is
    # dropped with the connection: never a 400 read as its answer while it runs upstream.
    statuses = [m["status"] for m in got]
    if upstream.urls():
        assert statuses == [200, 400]
    else:
        assert statuses in ([400], [])


@pytest.mark.parametrize("coding", [b"gzip, chunked", b"gzip"])
def test_a_response_transfer_coding_the_gateway_cannot_undo_is_refused(
    gateway: Gateway, upstreams: Any, ticket: Ticket, coding: bytes
) -> None:
    """The upstream echoes the held credential in a text response under a transfer coding:
    relayed as is, with the coding header dropped, the agent need only gunzip it."""
    coded = gzip.compress(b"your token is " + TOKEN.encode())
    if b"chunked" in coding:
        coded = b"%x\r\n%s\r\n0\r\n\r\n" % (len(coded), coded)
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: %s\r\n"
    answer = answer % coding + (b"\r\n" if b"chunked" in coding else b"Connection: close\r\n\r\n")
    upstream = upstreams(lambda n, _: answer + coded)
    gw, _ = gateway(upstream.url)
    with _connect(gw.url) as sock:
        sock.sendall(_get(b"/echo", ticket, b"Connection: close\r\n"))
        got, _ = _responses(sock)
    assert [m["status"] for m in got] == [502]


def test_a_refused_connection_closes_even_if_the_client_keeps_sending(
    gateway: Gateway, upstreams: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(serving, "_KEEP_ALIVE", 0.5)
    upstream = upstreams(lambda n, _: OK)
    gw, _ = gateway(upstream.url)
    with _connect(gw.url) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nBad Header: 1\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 400")
        deadline = time.monotonic() + 6  # the linger is 2 s
        closed = False
        while time.monotonic() < deadline and not closed:
            try:
                sock.sendall(b"x")  # once the server has closed, a send is reset
            except OSError:
                closed = True
            time.sleep(0.1)
        assert closed
    assert upstream.requests == []
