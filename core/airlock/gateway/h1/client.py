"""A lean HTTP/1.1 client for the HTTP gateway's one upstream: a keep-alive connection pool over
asyncio, responses parsed by httptools (llhttp).

    pool = Pool("https://api.example", Timeouts(connect=10, read=300, write=300, pool=30))
    request = Request("POST", "/v1/x?y=1", [(b"content-type", b"application/json")], b"{}")
    response = await pool.send(request)      # status and headers; the body streams
    async for chunk in response.aiter_raw(): ...
    await response.aclose()                  # the connection goes back to the pool, or closes
    await pool.aclose()

What a proxy needs and nothing more: no redirects, cookies, auth flows or default headers; the
body is relayed as it arrives (``Transfer-Encoding`` undone, ``Content-Encoding`` left alone).
TLS uses httpx's context (certifi's CA bundle, verification on, no environment variables read),
as the gateway did before this client. A request is never retried: an upstream that fails
mid-way is the caller's 502, and an approved request is sent at most once.

Errors (all :class:`UpstreamError`; the timeouts also :class:`UpstreamTimeout`) are named as
httpx names them, so the recorded ``upstream`` reason stays the same: ``ConnectError``,
``ConnectTimeout``, ``ReadTimeout``, ``WriteTimeout``, ``PoolTimeout``, ``ReadError``,
``WriteError``, ``RemoteProtocolError``.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

import httptools

from airlock.gateway.h1.messages import (
    ConnectError,
    ConnectTimeout,
    PoolTimeout,
    ReadError,
    ReadTimeout,
    RemoteProtocolError,
    Request,
    Timeouts,
    UpstreamError,
    UpstreamTimeout,
    WriteError,
    WriteTimeout,
)

__all__ = ["Pool", "Request", "Response", "Timeouts", "UpstreamError", "UpstreamTimeout"]

_HIGH_WATER = 256 * 1024  # response body buffered before reading from the upstream pauses
_NAMES = {n: n.encode() for n in ("content-type", "content-encoding", "content-length")}


class Response:
    """An upstream response: status and headers now, the body as it arrives."""

    def __init__(
        self,
        conn: _Connection,
        status: int,
        headers: list[tuple[bytes, bytes]],
        index: dict[bytes, bytes],
    ):
        self._conn = conn
        self.status_code = status
        self.raw_headers = headers
        self._closed = False
        self._index = index  # lower-case name: its first value

    def body_now(self) -> bytes | None:
        """The whole body when it has all arrived and none of it was read yet, else None."""
        conn = self._conn
        if not conn.complete or conn.error is not None or conn.taken:
            return None
        conn.taken = True
        body = conn.body
        data = body[0] if len(body) == 1 else b"".join(body)
        body.clear()
        conn.buffered = 0
        return data

    def header(self, name: str) -> str:
        """The first value of header ``name`` (lower-case), or ``""``."""
        value = self._index.get(_NAMES.get(name) or name.encode("latin-1"))
        return "" if value is None else value.decode("latin-1")

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        """The body as it arrives (chunked framing undone); raises :class:`UpstreamError`."""
        while (chunk := await self._conn.read_body()) is not None:
            yield chunk

    async def aclose(self) -> None:
        """Done with the response: its connection is reused if it was read to the end."""
        if not self._closed:
            self._closed = True
            self._conn.finish()


class Pool:
    """Keep-alive connections to one origin (``scheme://host[:port]``): at most
    ``max_connections`` at once, ``max_idle`` kept between requests."""

    def __init__(
        self,
        origin: str,
        timeouts: Timeouts,
        *,
        max_connections: int = 256,
        max_idle: int = 64,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(origin)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = ssl_context if parts.scheme == "https" else None
        if parts.scheme == "https" and self._ssl is None:
            self._ssl = _default_ssl_context()
        self.timeouts = timeouts
        self._host_header = parts.netloc.encode("ascii")
        # connections in use, at most ``max_connections``; waiters for a free one, in order
        self._busy = 0
        self._max = max_connections
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._max_idle = max_idle
        self._idle: deque[_Connection] = deque()

    def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[bytes, bytes]],
        content: bytes | AsyncIterator[bytes],
    ) -> Request:
        """A :class:`Request` to this pool's origin."""
        return Request(method, target, headers, content, origin=self.origin, host=self._host_header)

    async def send(self, request: Request, *, whole: int = 0) -> Response:
        """Send ``request``; return once the response's status and headers are in, or, when
        its Content-Length is at most ``whole``, once its body is in as well (then
        :meth:`Response.body_now` has it: one wake-up per response instead of two; the read
        timeout then covers head and body together)."""
        if self._busy < self._max and not self._waiting:
            self._busy += 1
        else:
            await self._wait_for_slot()
        try:
            conn = self._idle_connection() or await self._connect()
        except BaseException:
            self._free_slot()
            raise
        try:
            return await conn.exchange(request, whole)
        except BaseException:
            self.release(conn, reuse=False)
            raise

    async def _wait_for_slot(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            async with asyncio.timeout(self.timeouts.pool):
                await waiter  # its slot is handed over by _free_slot
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self._free_slot()  # handed a slot while leaving: pass it on
            elif waiter in self._waiting:
                self._waiting.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise PoolTimeout("no free connection to the upstream") from None
            raise

    def _free_slot(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot goes to it: _busy stays
                return
        self._busy -= 1

    def _idle_connection(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if conn.reusable():
                return conn
            conn.close()
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeouts.connect):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                )
        except TimeoutError:
            raise ConnectTimeout("connecting to the upstream timed out") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(f"cannot connect to the upstream: {exc}") from exc
        return conn

    def release(self, conn: _Connection, reuse: bool) -> None:
        self._free_slot()
        if reuse and len(self._idle) < self._max_idle:
            self._idle.append(conn)
        else:
            conn.close()

    def connections(self) -> list[_Connection]:
        """The idle connections (for tests)."""
        return list(self._idle)

    async def aclose(self) -> None:
        """Close the idle connections (those in use close when their response is done)."""
        closing = list(self._idle)
        self._idle.clear()
        for conn in closing:
            conn.close()
        await _closed(lambda: any(not c.lost for c in closing))


async def _closed(open_: Callable[[], bool], timeout: float = 1.0) -> None:
    """Wait (briefly) until transports asked to close have closed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while open_() and loop.time() < deadline:
        await asyncio.sleep(0.005)


def _default_ssl_context() -> ssl.SSLContext:
    import httpx  # its context: certifi's CA bundle, verification on, as before

    context = httpx.create_ssl_context(trust_env=False)
    context.set_alpn_protocols(["http/1.1"])
    return context


class _Trailing(Exception):
    """Bytes after the end of a response."""


class _Connection(asyncio.Protocol):
    """One connection to the upstream: one exchange at a time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser = httptools.HttpResponseParser(self)
        self.lost = False
        self.write_paused = False
        self.read_paused = False
        self.waiter: asyncio.Future[None] | None = None
        self.error: UpstreamError | None = None
        self.head_only = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.index: dict[bytes, bytes] = {}  # lower-case name: first value
        self.codings: list[bytes] = []  # Transfer-Encoding values
        self.head_done = False
        self.body: deque[bytes] = deque()
        self.buffered = 0
        self.taken = False  # the whole body was taken at once (Response.body_now)
        self.whole = 0  # a body up to this size (by Content-Length) is awaited with the head
        self.await_body = False  # this response's body is: no wake-up until it is complete
        self.complete = False
        self.keep_alive = False

    # ------------------------------------------------------------------ asyncio

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.head_done and not self.complete and self._until_close():
            self.complete = True  # a body without length or chunks ends with the connection
        if not self.complete:
            self._fail(ReadError("the upstream closed the connection mid-response"))
        self._wake()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _Trailing):
                self.keep_alive = False  # the response stands; the connection is never reused
            else:
                self._fail(RemoteProtocolError(f"malformed response from the upstream: {exc}"))
            self.transport.close()
        except httptools.HttpParserError as exc:
            self._fail(RemoteProtocolError(f"malformed response from the upstream: {exc}"))
            self.transport.close()
        if not self.await_body or self.complete or self.error is not None:
            self._wake()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake()

    # ------------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        if self.complete:  # bytes after the response: never parsed as the next one
            raise _Trailing

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        low = name.lower()
        if low not in self.index:
            self.index[low] = value
        if low == b"transfer-encoding":
            self.codings.append(value)

    def on_headers_complete(self) -> None:
        codings = self.codings
        if codings and (len(codings) > 1 or codings[0].strip().lower() != b"chunked"):
            raise ValueError("a Transfer-Encoding other than chunked")  # never relayed coded
        status = self.parser.get_status_code()
        if status < 200:  # 1xx (103 Early Hints): not the response; its headers are dropped
            self.headers, self.index, self.codings = [], {}, []
            return
        self.status = status
        self.head_done = True
        self.keep_alive = self.parser.should_keep_alive()
        if self.head_only:  # llhttp cannot be told the answer to HEAD has no body
            self.complete = True
            self.keep_alive = False
        elif self.whole:
            length = self.index.get(b"content-length", b"")
            self.await_body = length.isdigit() and int(length) <= self.whole

    def on_body(self, body: bytes) -> None:
        if self.head_only:
            return
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self.head_done:
            self.complete = True

    # ------------------------------------------------------------------ the exchange

    def _until_close(self) -> bool:
        framing = b"content-length" in self.index or b"transfer-encoding" in self.index
        return not framing and self.status not in (204, 304)

    def reusable(self) -> bool:
        return not self.lost and not self.transport.is_closing()

    def _begin(self, request: Request) -> None:
        self.status, self.headers, self.head_done, self.complete = 0, [], False, False
        self.index, self.codings = {}, []
        self.body.clear()
        self.buffered = 0
        self.taken = False
        self.await_body = False
        self.error = None
        self.head_only = request.method == "HEAD"

    async def exchange(self, request: Request, whole: int = 0) -> Response:
        self.whole = whole
        self._begin(request)
        if isinstance(request.content, bytes):  # head and body in one write
            self._write(request.head() + request.content)
        else:
            await self._send_stream(request)
        if self.error is not None and not self.head_done:
            raise self.error
        while not self.head_done:
            try:
                await self._wait(self.pool.timeouts.read, ReadTimeout)
            except UpstreamError:
                if not self.head_done:
                    raise
                # the head is in, its (awaited) body broke: the body's read reports it
        if self.await_body and not self.complete and self.error is None:
            await self._wait_body()
        return Response(self, self.status, self.headers, self.index)

    async def _wait_body(self) -> None:
        """Wait for the rest of a small body; a failure is left for the body's read to raise,
        as for any body."""
        try:
            while not self.complete and self.error is None:
                await self._wait(self.pool.timeouts.read, ReadTimeout)
        except UpstreamError:
            pass

    async def _send_stream(self, request: Request) -> None:
        assert not isinstance(request.content, bytes)
        self._write(request.head())
        async for chunk in request.content:
            if request.chunked and chunk:
                chunk = b"%x\r\n%s\r\n" % (len(chunk), chunk)
            self._write(chunk)
            while self.write_paused and self.error is None:
                await self._wait(self.pool.timeouts.write, WriteTimeout)
        if request.chunked:
            self._write(b"0\r\n\r\n")

    def _write(self, data: bytes) -> None:
        if self.lost or self.transport.is_closing():
            raise WriteError("the upstream closed the connection")
        self.transport.write(data)

    async def read_body(self) -> bytes | None:
        while not self.body:
            if self.complete:
                return None
            await self._wait(self.pool.timeouts.read, ReadTimeout)
        chunk = self.body.popleft()
        self.buffered -= len(chunk)
        if self.read_paused and self.buffered <= _HIGH_WATER // 2:
            self.read_paused = False
            self.transport.resume_reading()
        return chunk

    def finish(self) -> None:
        """The response is done with: back to the pool if read whole and reusable."""
        reuse = self.complete and self.keep_alive and self.error is None and self.reusable()
        self.pool.release(self, reuse)

    async def _wait(self, timeout: float, timed_out: type[UpstreamTimeout]) -> None:
        """Wait for the next event on the connection; raise its error, if any."""
        if self.error is not None:
            raise self.error
        self.waiter = self.loop.create_future()
        timer = self.loop.call_later(timeout, self._expire, timed_out)
        try:
            await self.waiter
        finally:
            timer.cancel()
            self.waiter = None
        if self.error is not None:
            raise self.error

    def _expire(self, timed_out: type[UpstreamTimeout]) -> None:
        self._fail(timed_out("the upstream did not answer in time"))
        self.transport.close()
        self._wake()

    def _fail(self, error: UpstreamError) -> None:
        if self.error is None:
            self.error = error

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def close(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()
