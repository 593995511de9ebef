"""One way to serve a gateway over HTTP: the HTTP, model and MCP gateways all start here.

    sock = bind(config, XGatewayError)       # TCP_NODELAY on every accepted socket
    server = await serve_asgi(app, sock, name="airlock-http-x")
    server.address, server.url("/mcp")
    await server.stop()

    running = start_in_thread(lambda: serve_x(config, ...), name="airlock-http-x")
    running.url; running.close()            # the same gateway in its own thread and loop

The app runs under ``gateway/h1``'s HTTP/1.1 server (httptools on an asyncio Protocol) on a
socket bound here, in the caller's event loop; it installs no signal handlers (the caller owns
signals) and logs nothing of its own. The gateways left uvicorn + h11 for it in issue 12: those
layers cost several times the gateway's own work per keep-alive request (docs/gateways.md).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from airlock.errors import InfrastructureUnavailable

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


async def serve_asgi(app: Any, sock: socket.socket, *, name: str) -> AsgiServer:
    """Serve ``app`` on ``sock`` (from :func:`bind`) with ``gateway/h1``'s server; returns once
    it accepts connections. ``name`` names the request tasks."""
    from airlock.gateway.h1.server import H1Server  # UsageError when httptools is missing

    h1 = H1Server(app, keep_alive=_KEEP_ALIVE, name=name)
    await h1.start(sock)
    return AsgiServer(sock, lambda: h1.stop(GRACE), h1.sockets)


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
