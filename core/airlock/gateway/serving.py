"""One way to serve a gateway over HTTP: the HTTP, model and MCP gateways all start here.

    sock = bind(config, XGatewayError)       # TCP_NODELAY on every accepted socket
    server = await serve_asgi(app, sock, name="airlock-http-x")
    server.address, server.url("/mcp")
    await server.stop()

    running = start_in_thread(lambda: serve_x(config, ...), name="airlock-http-x")
    running.url; running.close()            # the same gateway in its own thread and loop

The app runs under uvicorn on a socket bound here, in the caller's event loop; uvicorn's signal
handlers are not installed (the caller owns signals) and it logs nothing of its own.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from airlock.errors import InfrastructureUnavailable, UsageError

__all__ = [
    "AsgiServer",
    "HoldsApprovals",
    "Listens",
    "ProxyGateway",
    "Running",
    "ThreadedGateway",
    "bind",
    "new_event_loop",
    "serve_asgi",
    "start_in_thread",
]

# on close, responses in flight get this long; then their tasks are cancelled (and recorded),
# so that no task outlives the loop
GRACE = 5
_KEEP_ALIVE = 30


class Listens(Protocol):
    """The part of a gateway's config that says where it listens."""

    @property
    def name(self) -> str: ...

    @property
    def listen(self) -> str: ...

    @property
    def listen_host(self) -> str: ...

    @property
    def listen_port(self) -> int: ...


def bind(config: Listens, error: type[InfrastructureUnavailable]) -> socket.socket:
    """A listening, non-blocking TCP socket on the gateway's ``listen`` address; ``error`` says
    which gateway and address when the address cannot be had."""
    host, port = config.listen_host, config.listen_port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    # accepted sockets inherit it. Without it every keep-alive response waits on Nagle (~40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise error(
            f"gateway {config.name} cannot listen on {config.listen}: {exc.strerror}"
        ) from exc
    sock.listen(512)
    sock.setblocking(False)
    return sock


class _Coalescing:
    """A transport whose writes in one turn of the event loop leave in one ``send``.

    uvicorn writes a response's head and its body separately, so a keep-alive response cost the
    gateway two sends and the client two wake-ups; on a loopback hop between processes each
    costs more than the gateway's own work. Everything else is the wrapped transport's."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _Protocol(H11Protocol):
    """uvicorn's h11 protocol over a :class:`_Coalescing` transport."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_Coalescing(transport))  # type: ignore[arg-type]


@dataclass
class AsgiServer:
    """An ASGI app being served on ``sock`` in the current event loop."""

    sock: socket.socket
    _stop: Callable[[], Awaitable[None]] = field(repr=False)
    _accepted: Callable[[], list[socket.socket]] = field(repr=False)

    def accepted(self) -> list[socket.socket]:
        """The sockets of the client connections open now."""
        return self._accepted()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    def url(self, path: str = "") -> str:
        """``http://HOST:PORT`` + ``path`` (IPv6 hosts bracketed)."""
        host, port = self.address
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}{path}"

    async def stop(self) -> None:
        """Stop accepting, let responses in flight finish (up to :data:`GRACE` seconds)."""
        try:
            await self._stop()
        finally:
            self.sock.close()


SERVERS = ("h1", "uvicorn")


async def serve_asgi(app: Any, sock: socket.socket, *, name: str, server: str = "") -> AsgiServer:
    """Serve ``app`` on ``sock`` (from :func:`bind`); returns once it accepts connections.

    ``server``: ``h1`` (default; ``gateway/h1``: httptools on an asyncio Protocol) or ``uvicorn``
    (uvicorn + h11); when empty, ``AIRLOCK_GATEWAY_SERVER`` or ``h1``."""
    chosen = server or os.environ.get("AIRLOCK_GATEWAY_SERVER", "") or "h1"
    if chosen not in SERVERS:
        raise UsageError(
            f"unknown gateway server {chosen!r}",
            hint=f"set AIRLOCK_GATEWAY_SERVER to one of {', '.join(SERVERS)}",
        )
    if chosen == "uvicorn":
        return await _serve_uvicorn(app, sock, name=name)
    from airlock.gateway.h1.server import H1Server  # UsageError when httptools is missing

    h1 = H1Server(app, keep_alive=_KEEP_ALIVE)
    await h1.start(sock)
    return AsgiServer(sock, lambda: h1.stop(GRACE), h1.sockets)


async def _serve_uvicorn(app: Any, sock: socket.socket, *, name: str) -> AsgiServer:
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            server_header=False,
            date_header=False,
            proxy_headers=False,
            # h11 whatever else is installed (httptools would judge framing differently: it
            # refuses Content-Length with Transfer-Encoding where h11 lets chunked win)
            http=_Protocol,
            timeout_keep_alive=_KEEP_ALIVE,
            timeout_graceful_shutdown=GRACE,
        )
    )
    server.config.load()
    server.lifespan = server.config.lifespan_class(server.config)
    await server.startup(sockets=[sock])
    task = asyncio.create_task(server.main_loop(), name=name)

    async def stop() -> None:
        server.should_exit = True
        try:
            await task
        finally:
            await server.shutdown(sockets=[sock])

    def accepted() -> list[socket.socket]:
        return [c.transport.get_extra_info("socket") for c in server.server_state.connections]

    return AsgiServer(sock, stop, accepted)


class Closes(Protocol):
    """An upstream client (an ``httpx.AsyncClient``, a ``gateway/h1`` pool)."""

    async def aclose(self) -> None: ...


class HoldsApprovals(Protocol):
    """An app that can refuse what it holds for approval (the session is ending)."""

    def cancel_holds(self) -> int: ...


P = TypeVar("P", bound=HoldsApprovals)


@dataclass
class ProxyGateway(Generic[P]):
    """A proxy app (HTTP or model API) served in the current event loop, with its upstream
    client."""

    name: str
    proxy: P
    _server: AsgiServer = field(repr=False)
    _client: Closes = field(repr=False)

    @property
    def address(self) -> tuple[str, int]:
        return self._server.address

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` (no ticket: the agent sends it as auth)."""
        return self._server.url()

    async def close(self) -> None:
        """Stop accepting, refuse the requests held for approval (each recorded, with its
        approval cancelled), finish the others (briefly), close the upstream client."""
        self.proxy.cancel_holds()
        try:
            await self._server.stop()
        finally:
            await self._client.aclose()


class Running(Protocol):
    """What a gateway running in an event loop offers."""

    @property
    def url(self) -> str: ...

    @property
    def address(self) -> tuple[str, int]: ...

    async def close(self) -> None: ...


G = TypeVar("G", bound=Running)


class ThreadedGateway(Generic[G]):
    """A gateway in its own thread and event loop (for ``airlock run``): see
    :func:`start_in_thread`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, thread: threading.Thread, gateway: G):
        self._loop = loop
        self._thread = thread
        self.gateway = gateway

    @property
    def address(self) -> tuple[str, int]:
        return self.gateway.address

    @property
    def url(self) -> str:
        return self.gateway.url

    def close(self, timeout: float = 10.0) -> None:
        """Stop the gateway and its thread (closing again does nothing)."""
        if not self._thread.is_alive():
            return
        future = asyncio.run_coroutine_threadsafe(self.gateway.close(), self._loop)
        try:
            future.result(timeout)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop where it is installed (a quarter less CPU per proxied request on the
    keep-alive benchmark), else asyncio's: the gateways behave the same on both."""
    try:
        import uvloop
    except ImportError:  # uvloop comes with airlock-ci[fast]
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def start_in_thread(
    start: Callable[[], Awaitable[G]], *, name: str, timeout: float = 10.0, uvloop: bool = True
) -> ThreadedGateway[G]:
    """Run ``start()`` in a new daemon thread with its own event loop, which then serves until
    :meth:`ThreadedGateway.close`. Returns once ``start()`` returned; raises what it raised.
    ``uvloop=False``: asyncio's loop, for a gateway that runs a child process (under uvloop the
    MCP gateway's close outlasted its timeout waiting on its stdio server: not yet understood)."""
    loop = new_event_loop() if uvloop else asyncio.new_event_loop()
    started: Future[G] = Future()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            started.set_result(loop.run_until_complete(start()))
        except BaseException as exc:  # handed to the caller below
            started.set_exception(exc)
            loop.close()
            return
        loop.run_forever()
        loop.close()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        gateway = started.result(timeout)
    except BaseException:
        thread.join(timeout)
        raise
    return ThreadedGateway(loop, thread, gateway)
