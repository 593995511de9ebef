"""One request and its response on a connection of ``server.py``, as the ASGI app sees them:
``receive`` hands out the body as it arrives (answering ``Expect: 100-continue`` first) and then
``http.disconnect``; ``send`` frames the response (Content-Length when the whole body comes in one
message, else chunks; none for HEAD, 1xx, 204, 304) and writes its head with the first body.

The scope carries two extensions. ``scope["extensions"]["airlock.client_gone"]``: a function
that says, without awaiting, whether the client has left; an app that streams a response checks
it instead of running a task that awaits ``http.disconnect`` (one task fewer per request).
``scope["extensions"]["airlock.body_now"]``: a function that returns the whole request body when
it has all arrived and none of it was received yet (taking it, as ``receive`` would), else None;
a small request then costs no ``receive`` round. ``scope["extensions"]["airlock.respond"]``:
``respond(status, headers, body)`` sends a whole response at once, without awaiting: what
``http.response.start`` and one last ``http.response.body`` do.
``scope["extensions"]["airlock.peer_closed"]``: whether the client has closed its end, asked of
the socket (a connection whose reading is paused hears of it only when reading resumes): an app
that waits long (a request held for approval) polls it."""

from __future__ import annotations

import asyncio
import http
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airlock.gateway.h1.server import Connection

__all__ = ["BODY_NOW", "CLIENT_GONE", "PEER_CLOSED", "RESPOND", "App", "Cycle", "error_response"]

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_BODYLESS = frozenset({204, 304})
CLIENT_GONE = "airlock.client_gone"
BODY_NOW = "airlock.body_now"
RESPOND = "airlock.respond"
PEER_CLOSED = "airlock.peer_closed"
_STATUS = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in http.HTTPStatus}


def _status_line(status: int) -> bytes:
    return _STATUS.get(status) or f"HTTP/1.1 {status} \r\n".encode()


def error_response(status: int, error: str, hint: str) -> bytes:
    body = json.dumps({"error": error, "hint": hint}).encode()
    return (
        _status_line(status)
        + b"content-type: application/json\r\nconnection: close\r\n"
        + b"content-length: %d\r\n\r\n" % len(body)
        + body
    )


class Cycle:
    """One request and its response, as the ASGI app sees them (``receive`` and ``send``)."""

    def __init__(
        self, conn: Connection, scope: dict[str, Any], *, keep_alive: bool, expect: bool = False
    ) -> None:
        self.conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self.expect_100 = expect  # the request said Expect: 100-continue
        self.head_only = scope["method"] == "HEAD"
        self.body = bytearray()
        self.more = True
        self.ended = False  # the last body message was handed to the app
        self.waiter: asyncio.Future[None] | None = None  # receive() waits on it
        self.disconnected = False
        self.response_started = False
        self.response_complete = False
        self.chunked = False
        self.bodyless = False
        self.head = b""
        scope["extensions"] = {
            CLIENT_GONE: self.client_gone,
            BODY_NOW: self.body_now,
            RESPOND: self.respond,
            PEER_CLOSED: conn.peer_closed,
        }

    def client_gone(self) -> bool:
        """The client left (or its connection was refused) before the response was complete."""
        return self.disconnected

    def body_now(self) -> bytes | None:
        """The whole body, when it has all arrived and nothing of it was received yet."""
        if self.more or self.ended or self.disconnected or self.expect_100:
            return None
        data = bytes(self.body)
        self.body.clear()
        self.ended = True
        self.conn.body_taken()
        return data

    def wake(self) -> None:
        """Something changed (body, end, disconnect): a waiting ``receive`` looks again."""
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def run(self, app: App) -> None:
        try:
            await app(self.scope, self.receive, self.send)
        except asyncio.CancelledError:
            self.conn.close()
            raise
        except Exception:  # the app's own bug: the client gets a 500, never its message
            self._failed()
            return
        if not self.response_complete:
            self._failed()

    def _failed(self) -> None:
        if not self.response_started and not self.conn.lost and not self.conn.refused:
            error = "internal error in the gateway"
            self.conn.transport.write(error_response(500, error, "this is a bug in Airlock"))
        self.conn.close()  # a response cut short: the client must see the break

    async def receive(self) -> dict[str, Any]:
        if self.expect_100:
            self.expect_100 = False
            if not self.response_started and not self.conn.transport.is_closing():
                self.conn.transport.write(_CONTINUE)
        while True:
            if self.disconnected or self.response_complete:
                return {"type": "http.disconnect"}
            if self.body or (not self.more and not self.ended):
                message = {"type": "http.request", "body": bytes(self.body), "more_body": self.more}
                self.body.clear()
                self.ended = not self.more
                self.conn.body_taken()
                return message
            self.waiter = self.conn.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.response_started:
                raise RuntimeError("the response was already started")
            self.response_started = True
            self._start(int(message["status"]), message.get("headers", []))
        elif kind == "http.response.body":
            if not self.response_started or self.response_complete:
                raise RuntimeError("http.response.body outside a response")
            more = bool(message.get("more_body", False))
            self._write(bytes(message.get("body", b"")), more)
            if more:
                await self.conn.drain()
            else:
                self.response_complete = True
                self.wake()
                self.conn.done(self)

    def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """The whole response at once (see the module doc)."""
        if self.response_started:
            raise RuntimeError("the response was already started")
        self.response_started = True
        self._start(status, headers)
        self._write(body, False)
        self.response_complete = True
        self.wake()
        self.conn.done(self)

    def _start(self, status: int, headers: Any) -> None:
        lines = [_status_line(status)]
        length = False
        for name, value in headers:
            low = name.lower()
            if low == b"content-length":
                length = True
            elif low == b"connection" and b"close" in value.lower():
                self.keep_alive = False
            elif low == b"transfer-encoding":
                continue  # framing is this server's
            lines.append(b"%s: %s\r\n" % (name, value))
        self.bodyless = self.head_only or status in _BODYLESS or status < 200
        self.chunked = not length and not self.bodyless
        if self.chunked and self.scope["http_version"] == "1.0":
            self.chunked = False  # HTTP/1.0 has no chunks: the body ends with the connection
            self.keep_alive = False
        self.head = b"".join(lines)

    def _write(self, body: bytes, more: bool) -> None:
        data = b""
        if self.head:
            head, self.head = self.head, b""
            if self.chunked and not more:  # the whole body in one message: give its length
                self.chunked = False
                head += b"content-length: %d\r\n" % len(body)
            elif self.chunked:
                head += b"transfer-encoding: chunked\r\n"
            if not self.keep_alive:
                head += b"connection: close\r\n"
            data = head + b"\r\n"
        if self.bodyless:
            body = b""
        elif self.chunked:
            body = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + (
                b"" if more else b"0\r\n\r\n"
            )
        if self.conn.lost or self.conn.refused or self.conn.transport.is_closing():
            return
        self.conn.transport.write(data + body if data else body)
