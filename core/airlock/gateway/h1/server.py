"""A lean HTTP/1.1 server for the gateways' ASGI apps: an asyncio Protocol over httptools
(llhttp, the parser of Node.js).

    server = H1Server(app)
    await server.start(sock)          # a listening socket from ``serving.bind``
    await server.stop(grace=5)        # stop accepting; finish, then cancel, requests in flight

Why not uvicorn: on a keep-alive request through the HTTP gateway, uvicorn + h11 cost several
times the gateway's own work (bench/RESULTS.md). This server does only what the gateways use:
keep-alive and pipelining (one request at a time per connection), streamed bodies both ways
with flow control, chunked encoding, ``Expect: 100-continue``, the ASGI ``http.disconnect``
when the client leaves, and a graceful stop.

Framing is llhttp's, which is strict where a proxy must be: Content-Length together with
Transfer-Encoding, a duplicate Content-Length, a bad chunk size or a header folded over two lines
is a 400 and the connection is closed, before the app sees anything. A Transfer-Encoding other
than exactly ``chunked`` is refused too (501): the upstream would have to undo it.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from typing import Any
from urllib.parse import unquote

import httptools

from airlock.gateway.h1.cycle import App, Cycle, error_response
from airlock.gateway.peer import peer_closed

__all__ = ["H1Server"]

_MAX_HEAD = 64 * 1024  # request line and headers; beyond this the request is refused (431)
_HIGH_WATER = 256 * 1024  # request body buffered before reading from the client pauses
_MAX_PIPELINE = 16  # requests parsed ahead of the one being answered
_LINGER = 2.0  # seconds a refused connection still reads (and drops) before it closes
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")}


class _Overflow(Exception):
    """Too many pipelined requests ahead: the rest of the read is left unparsed."""


class _BadRequest(Exception):
    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


class H1Server:
    """Serves one ASGI app on listening sockets in the running event loop (see module doc)."""

    def __init__(self, app: App, *, keep_alive: float = 30.0, name: str = "h1") -> None:
        self.app = app
        self.name = name
        self.keep_alive = keep_alive
        self.connections: set[Connection] = set()
        self._server: asyncio.Server | None = None

    async def start(self, sock: socket.socket) -> None:
        """Accept connections on ``sock`` (listening, non-blocking)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: Connection(self), sock=sock)

    def sockets(self) -> list[socket.socket]:
        """The sockets of the client connections open now."""
        found = (c.transport.get_extra_info("socket") for c in self.connections)
        return [s for s in found if s is not None]

    async def stop(self, grace: float) -> None:
        """Stop accepting; close idle connections; give requests in flight ``grace`` seconds,
        then cancel them (the app sees the cancellation and can record it)."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.shutdown()
        tasks = [c.task for c in self.connections if c.task is not None and not c.task.done()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=grace)
        for conn in list(self.connections):
            conn.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        while self.connections and loop.time() < deadline:  # until each connection_lost ran
            await asyncio.sleep(0.005)


class Connection(asyncio.Protocol):
    """One client connection: parses requests, runs one :class:`Cycle` at a time."""

    def __init__(self, server: H1Server) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.cycle: Cycle | None = None  # the request being answered
        self.parsing: Cycle | None = None  # the request whose body is being read
        self.pipeline: deque[Cycle] = deque()
        self.task: asyncio.Task[None] | None = None  # answers requests, one after another
        self.waiter: asyncio.Future[Cycle | None] | None = None  # the task, idle, waits on it
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.in_head = False
        self.head_size = 0
        self.chunk_size = 0
        self.write_paused = False
        self.read_paused = False
        self.drained: list[asyncio.Future[None]] = []
        self.timer: asyncio.TimerHandle | None = None
        self.stopping = False
        self.upgraded = False
        self.refused = False
        self.overflow = False  # too many pipelined requests: the rest is read once they are done
        self.head_bytes = 0
        self.trailers = 0
        self.codings: list[bytes] = []  # Transfer-Encoding values of the request being parsed
        self.expect = False  # the request being parsed says Expect: 100-continue
        self.idle_since = 0.0
        self.lost = False
        self.addresses: tuple[Any, Any] = (None, None)

    # ------------------------------------------------------------------ transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self.server.connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # bind() asks for TCP_NODELAY through the protocol number; set it here as well
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        here = transport.get_extra_info("sockname")
        self.addresses = (tuple(here[:2]) if here else None, tuple(peer[:2]) if peer else None)
        self._idle()

    def peer_closed(self) -> bool:
        """Whether the client has closed its end (FIN or RST), asked of the socket itself: a
        connection whose reading is paused (a request pipelined behind the one being answered,
        a full body buffer) is not told of it by the event loop until reading resumes."""
        return self.lost or peer_closed(self.transport.get_extra_info("socket"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.server.connections.discard(self)
        self._cancel_timer()
        for cycle in (self.cycle, self.parsing, *self.pipeline):
            if cycle is not None:
                cycle.disconnected = True
                cycle.wake()
        self._wake_task(None)
        self._wake_writers()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_writers()

    def _wake_writers(self) -> None:
        for waiter in self.drained:
            if not waiter.done():
                waiter.set_result(None)
        self.drained.clear()

    async def drain(self) -> None:
        if self.write_paused and not self.lost:
            waiter = self.loop.create_future()
            self.drained.append(waiter)
            await waiter

    def data_received(self, data: bytes) -> None:
        # the timer is not cancelled here: an unfinished head, or a client that keeps sending
        # after a refusal, must not keep the connection (the idle timer only closes when idle)
        if self.upgraded or self.refused or self.overflow:
            return  # another protocol's bytes after an Upgrade; anything after a refusal
        self.chunk_size = len(data)
        if self.in_head:
            self.head_size += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.upgraded = True  # answered as plain HTTP (the proxy strips Upgrade), then closed
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Overflow):
                self.overflow = True
                self._pause_reading()
                return
            if not isinstance(cause, _BadRequest):
                raise
            self._refuse(cause.status, cause.error)
        except httptools.HttpParserError as exc:
            self._refuse(400, f"malformed HTTP/1.1 request: {exc}")
        else:
            if self.in_head and self.head_size > _MAX_HEAD:
                self._refuse(431, f"request line and headers larger than {_MAX_HEAD} bytes")

    # ------------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.in_head = True
        # at most the whole chunk it began in: a head is never let past the limit unseen
        self.head_size = self.chunk_size
        self.head_bytes = 0
        self.trailers = 0
        self.codings = []
        self.expect = False

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.in_head:  # a trailer field: counted, never merged into the headers
            self.trailers += len(name) + len(value)
            if self.trailers > _MAX_HEAD:
                raise _BadRequest(431, f"trailer fields larger than {_MAX_HEAD} bytes")
            return
        self.head_bytes += len(name) + len(value) + 4
        name = name.lower()
        self.headers.append((name, value))
        if name == b"transfer-encoding":
            self.codings.append(value)
        elif name == b"expect" and value.lower() == b"100-continue":
            self.expect = True

    def on_headers_complete(self) -> None:
        self.in_head = False
        if self.head_bytes > _MAX_HEAD:  # a head completed within a read is checked here
            raise _BadRequest(431, f"request line and headers larger than {_MAX_HEAD} bytes")
        if self.cycle is not None and len(self.pipeline) >= _MAX_PIPELINE:
            raise _Overflow
        codings = self.codings
        if codings and (len(codings) > 1 or codings[0].strip().lower() != b"chunked"):
            raise _BadRequest(501, "only Transfer-Encoding: chunked is accepted")
        cycle = Cycle(
            self, self._scope(), keep_alive=self.parser.should_keep_alive(), expect=self.expect
        )
        self.parsing = cycle
        if self.cycle is None:
            self._run(cycle)
        else:  # pipelined: answered in order, once the one before is
            self.pipeline.append(cycle)
            self._pause_reading()

    def on_body(self, body: bytes) -> None:
        if self.parsing is not None and not self.parsing.response_complete:
            self.parsing.body += body
            self.parsing.wake()
            if len(self.parsing.body) > _HIGH_WATER:
                self._pause_reading()

    def on_message_complete(self) -> None:
        if self.parsing is not None:
            self.parsing.more = False
            self.parsing.wake()
            self.parsing = None

    def _scope(self) -> dict[str, Any]:
        raw_path, _, query = self.url.partition(b"?")
        path = raw_path.decode("latin-1")
        method = self.parser.get_method()
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": self.parser.get_http_version(),
            "server": self.addresses[0],
            "client": self.addresses[1],
            "scheme": "http",
            "method": _METHODS.get(method) or method.decode("ascii"),
            "root_path": "",
            "path": unquote(path) if "%" in path else path,
            "raw_path": raw_path,
            "query_string": query,
            "headers": self.headers,
        }

    # ------------------------------------------------------------------ cycles

    def _run(self, cycle: Cycle) -> None:
        self.cycle = cycle
        if not self._wake_task(cycle):  # none idle: the first request, or the task is busy
            self.task = self.loop.create_task(self._serve(cycle), name=self.server.name)

    def _wake_task(self, cycle: Cycle | None) -> bool:
        waiter, self.waiter = self.waiter, None
        if waiter is None or waiter.done():
            return False
        waiter.set_result(cycle)
        return True

    async def _serve(self, cycle: Cycle | None) -> None:
        """Answer this connection's requests in turn: one task per connection, not per request
        (a keep-alive request costs a future, not a task). ``None`` ends it (the connection is
        lost)."""
        app = self.server.app
        while cycle is not None:
            await cycle.run(app)
            if self.lost or self.transport.is_closing() or self.cycle is not None:
                # closing; or the next request came while the app was still running after its
                # response, and has a task of its own
                return
            waiter = self.loop.create_future()
            self.waiter = waiter
            cycle = await waiter

    def done(self, cycle: Cycle) -> None:
        """``cycle``'s response is complete: next request, or close."""
        if self.refused:
            return  # closing (lingering) already
        if self.overflow and not self.pipeline:
            self.cycle = None
            self._refuse(429, f"more than {_MAX_PIPELINE} pipelined requests")
            return
        if not cycle.keep_alive or self.stopping or self.upgraded or self.lost:
            self.close()
            return
        self.cycle = None
        if self.pipeline:
            self._run(self.pipeline.popleft())
        if not self.pipeline:
            self._resume_reading()
        if self.cycle is None:
            self._idle()

    def _refuse(self, status: int, error: str) -> None:
        """Answer a request the parser refused (when no response has begun), then close.

        The app's request, if one is running, sees the client leave. The connection ends with
        a lingering close: what the client still sends is read and dropped for a moment, so
        that its kernel gets no reset, which could discard the answer before it is read."""
        if self.cycle is None or not self.cycle.response_started:
            hint = "send one well-formed HTTP/1.1 request (RFC 9112)"
            self.transport.write(error_response(status, error, hint))
        self.refused = True
        for cycle in (self.cycle, self.parsing, *self.pipeline):
            if cycle is not None:
                cycle.disconnected = True
                cycle.wake()
        self.pipeline.clear()
        self._resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self._cancel_timer()
            self.timer = self.loop.call_later(_LINGER, self.close)  # cancelled by close()
        else:
            self.close()

    def shutdown(self) -> None:
        """The server stops: close now if idle, else after the current response."""
        self.stopping = True
        if self.cycle is None:
            self.close()

    def close(self) -> None:
        self._cancel_timer()
        if not self.transport.is_closing():
            self.transport.close()

    def _pause_reading(self) -> None:
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.read_paused and not self.pipeline:
            self.read_paused = False
            if not self.transport.is_closing():
                self.transport.resume_reading()

    def body_taken(self) -> None:
        self._resume_reading()

    def _idle(self) -> None:
        # One timer, moved on lazily: a keep-alive request costs a clock read, not a timer.
        self.idle_since = self.loop.time()
        if self.timer is None:
            self.timer = self.loop.call_later(self.server.keep_alive, self._idle_timeout)

    def _idle_timeout(self) -> None:
        self.timer = None
        if self.cycle is not None:
            return  # busy: the next _idle() sets a timer again
        left = self.idle_since + self.server.keep_alive - self.loop.time()
        if left > 0:
            self.timer = self.loop.call_later(left, self._idle_timeout)
        else:
            self.close()

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
