"""Run the HTTP gateway: uvicorn on a socket bound by us, in the caller's loop or a thread.

    gateway = await serve_http(config, masker=m, record=w.append, approve=a, ticket=t,
                               guardrails=policy.guardrails, defaults=policy.guardrail_defaults)
    gateway.url  # http://127.0.0.1:PORT  (the agent adds the ticket)
    await gateway.close()

``start_in_thread(...)`` runs the same in a background thread with its own event loop, for
``airlock run``. uvicorn's signal handlers are not installed: the caller owns signals.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn

from airlock.errors import ConfigError, InfrastructureUnavailable
from airlock.gateway.http.credentials import load_injector
from airlock.gateway.http.proxy import Approve, HttpProxy, ProxySettings, Record
from airlock.gateway.tickets import TicketCheck
from airlock.mask import Masker
from airlock.policy.gateways import HttpGatewayConfig
from airlock.policy.guardrails import GuardrailDefaults, GuardrailRule, rules_for_gateway

__all__ = [
    "HttpGateway",
    "HttpGatewayError",
    "ThreadedHttpGateway",
    "serve_http",
    "start_in_thread",
]

_UPSTREAM_TIMEOUT = httpx.Timeout(connect=10.0, read=300.0, write=300.0, pool=30.0)
_START_TIMEOUT = 10.0
_GRACE = 5


class HttpGatewayError(InfrastructureUnavailable):
    """The HTTP gateway could not start or stopped unexpectedly."""

    default_hint = "check the gateway's listen address in airlock.yaml (is the port free?)"


@dataclass
class HttpGateway:
    """A running HTTP gateway in the current event loop."""

    name: str
    address: tuple[str, int]
    proxy: HttpProxy
    _server: uvicorn.Server = field(repr=False)
    _task: asyncio.Task[None] = field(repr=False)
    _client: httpx.AsyncClient = field(repr=False)
    _sock: socket.socket = field(repr=False)

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` (no ticket: the agent sends it as auth)."""
        host, port = self.address
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}"

    async def close(self) -> None:
        """Stop accepting, refuse the requests held for approval (each recorded, with its
        approval cancelled), finish the others (briefly), close the upstream client."""
        self.proxy.cancel_holds()
        self._server.should_exit = True
        try:
            await self._task
        finally:
            await self._server.shutdown(sockets=[self._sock])
            await self._client.aclose()
            self._sock.close()


async def serve_http(
    config: HttpGatewayConfig,
    *,
    masker: Masker,
    record: Record,
    approve: Approve | None,
    ticket: TicketCheck,
    guardrails: Sequence[GuardrailRule] = (),
    defaults: GuardrailDefaults | None = None,
    environ: Mapping[str, str] | None = None,
    settings: ProxySettings | None = None,
) -> HttpGateway:
    """Start the gateway described by ``config`` and return once it accepts connections.

    The held credential is read from ``environ`` (default: ``os.environ``) and registered with
    ``masker``; ``guardrails`` are filtered to the rules that apply to this gateway.
    """
    injector = load_injector(
        config.credential, os.environ if environ is None else environ, masker, config.name
    )
    client = httpx.AsyncClient(
        timeout=_UPSTREAM_TIMEOUT,
        follow_redirects=False,
        trust_env=False,  # no proxy variables, no ~/.netrc credentials slipped in
        limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
    )
    proxy = HttpProxy(
        config,
        masker=masker,
        record=record,
        approve=approve,
        ticket=ticket,
        injector=injector,
        client=client,
        rules=rules_for_gateway(guardrails, config.name, "http"),
        defaults=defaults,
        settings=settings,
    )
    sock = _bind(config)
    server = uvicorn.Server(
        uvicorn.Config(
            proxy,
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            server_header=False,
            proxy_headers=False,
            http="h11",  # the same HTTP parser whatever else is installed (httptools: broker)
            date_header=False,
            timeout_keep_alive=30,
            # on close, responses in flight get this long; then their tasks are cancelled
            # (and recorded), so that no task outlives the loop
            timeout_graceful_shutdown=_GRACE,
        )
    )
    server.config.load()
    server.lifespan = server.config.lifespan_class(server.config)
    await server.startup(sockets=[sock])
    task = asyncio.create_task(server.main_loop(), name=f"airlock-http-{config.name}")
    host, port = sock.getsockname()[:2]
    return HttpGateway(config.name, (host, port), proxy, server, task, client, sock)


def _bind(config: HttpGatewayConfig) -> socket.socket:
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
        raise HttpGatewayError(
            f"gateway {config.name} cannot listen on {config.listen}: {exc.strerror}"
        ) from exc
    sock.listen(512)
    sock.setblocking(False)
    return sock


class ThreadedHttpGateway:
    """An :class:`HttpGateway` running in its own thread and event loop."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, thread: threading.Thread, gateway: HttpGateway
    ):
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
        """Stop the gateway and its thread."""
        if not self._thread.is_alive():
            return
        future = asyncio.run_coroutine_threadsafe(self.gateway.close(), self._loop)
        try:
            future.result(timeout)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)


def start_in_thread(config: HttpGatewayConfig, **kwargs: Any) -> ThreadedHttpGateway:
    """:func:`serve_http` in a background thread; returns once it accepts connections.

    Raises what :func:`serve_http` raises (ConfigError for a missing credential variable,
    HttpGatewayError when the address is taken).
    """
    loop = asyncio.new_event_loop()
    started: Future[HttpGateway] = Future()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            started.set_result(loop.run_until_complete(serve_http(config, **kwargs)))
        except BaseException as exc:  # handed to the caller below
            started.set_exception(exc)
            loop.close()
            return
        loop.run_forever()
        loop.close()

    thread = threading.Thread(target=run, name=f"airlock-http-{config.name}", daemon=True)
    thread.start()
    try:
        gateway = started.result(_START_TIMEOUT)
    except (ConfigError, HttpGatewayError):
        thread.join()
        raise
    return ThreadedHttpGateway(loop, thread, gateway)
