"""The HTTP gateway's ordering contract (docs/gateways.md): a request is recorded
(``http.request``) before it goes upstream, so one whose event cannot be written is never sent;
and a response is recorded (``http.response``) before its last byte reaches the client, so a
client never holds a response the log lacks."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from tests.gateway.http.conftest import TOKEN, GatewayFactory, Recorder
from tests.gateway.http.servers import serving, upstream_app

from airlock.errors import RecordingError
from airlock.gateway.http import ThreadedHttpGateway, start_in_thread
from airlock.gateway.tickets import Ticket
from airlock.mask import Masker, MaskSettings


class Seen:
    """The upstream, counting the requests that reach it."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.paths.append(scope["path"])
        await upstream_app(scope, receive, send)


def _gateway(
    make_gateway: GatewayFactory, ticket: Ticket, record: Any, upstream: str
) -> ThreadedHttpGateway:
    config = make_gateway().gateway.proxy.config.model_copy(update={"upstream": upstream})
    return start_in_thread(
        config,
        masker=Masker(MaskSettings()),
        record=record,
        approve=None,
        ticket=ticket,
        environ={"API_TOKEN": TOKEN},
    )


@pytest.fixture
def seen() -> Iterator[tuple[Seen, str]]:
    app = Seen()
    with serving(app) as server:
        yield app, server.url


def _get(sock: socket.socket, path: str, ticket: Ticket, method: str = "GET") -> bytes:
    """Send one keep-alive request; return the whole response (head and body) as bytes."""
    sock.sendall(
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ticket.value}\r\n\r\n".encode()
    )
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    lengths = [
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    ]
    if method == "HEAD" or lengths:
        while len(body) < (0 if method == "HEAD" else lengths[0]):
            body += sock.recv(65536)
    else:  # chunked
        while not body.endswith(b"0\r\n\r\n"):
            body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def test_a_request_whose_event_cannot_be_recorded_is_never_sent(
    make_gateway: GatewayFactory, ticket: Ticket, seen: tuple[Seen, str]
) -> None:
    upstream, url = seen

    def record(type_: str, data: Mapping[str, Any]) -> None:
        if type_ == "http.request" and "canary" in str(data.get("path")):
            raise RecordingError("disk full")

    gw = _gateway(make_gateway, ticket, record, url)
    try:
        with socket.create_connection(gw.address) as sock:
            assert _get(sock, "/canary/1", ticket).startswith(b"HTTP/1.1 503")
        with socket.create_connection(gw.address) as sock:  # and it goes on for the rest
            assert _get(sock, "/fine", ticket).startswith(b"HTTP/1.1 200")
    finally:
        gw.close()
    assert upstream.paths == ["/fine"]


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/items", "GET"),  # a small JSON response, masked whole for the client
        ("/binary", "GET"),  # not text: relayed as it comes, the last chunk held back
        (f"/stream/{3 * 65536}", "GET"),  # streamed in several chunks
        ("/items", "HEAD"),  # no body: complete with its head
    ],
)
def test_a_response_is_recorded_before_the_client_has_all_of_it(
    make_gateway: GatewayFactory,
    ticket: Ticket,
    seen: tuple[Seen, str],
    path: str,
    method: str,
) -> None:
    _, url = seen
    held: list[int] = []  # bytes of the response the client's socket held at recording time
    client: list[socket.socket] = []

    def record(type_: str, data: Mapping[str, Any]) -> None:
        if type_ == "http.response" and client:
            try:
                held.append(len(client[0].recv(1 << 22, socket.MSG_PEEK | socket.MSG_DONTWAIT)))
            except BlockingIOError:
                held.append(0)

    gw = _gateway(make_gateway, ticket, record, url)
    try:
        with socket.create_connection(gw.address) as sock:
            client.append(sock)
            for _ in range(2):  # keep-alive: the second request on the same connection too
                whole = _get(sock, path, ticket, method)
                assert whole.startswith(b"HTTP/1.1 200")
    finally:
        gw.close()
    assert len(held) == 2
    assert all(size < len(whole) for size in held), (held, len(whole))


def test_a_client_that_leaves_mid_response_is_noticed_and_recorded(
    make_gateway: GatewayFactory, ticket: Ticket, recorder: Recorder
) -> None:
    """No watcher task: the h1 server's ``airlock.client_gone`` says the client left, the relay
    stops and ``http.response`` records why."""
    gw = make_gateway()
    with socket.create_connection(gw.address) as sock:
        sock.sendall(
            f"GET /slow HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ticket.value}\r\n\r\n".encode()
        )
        sock.settimeout(10)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")  # the head and the first tick
    for _ in range(500):  # the upstream sends a tick every 0.1 s: the next one finds it gone
        if recorder.of("http.response"):
            break
        time.sleep(0.01)
    (response,) = recorder.of("http.response")
    assert response["status"] == 200 and response["error"] == "client disconnected mid-response"
