"""Run the model gateway: uvicorn on a socket bound by us, in the caller's loop or a thread.

gateway = await serve_llm(config, masker=m, record=w.append, approve=a, ticket=t,
                          environ=os.environ)
gateway.url   # http://127.0.0.1:PORT: ANTHROPIC_BASE_URL, or OPENAI_BASE_URL (+ /v1)
await gateway.close()
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn

from airlock.errors import ConfigError, InfrastructureUnavailable
from airlock.gateway.llm.proxy import Approve, LlmProxy, Record
from airlock.gateway.tickets import TicketCheck
from airlock.mask import Masker
from airlock.policy.agent_gateways import LlmGatewayConfig

__all__ = ["LlmGateway", "LlmGatewayError", "ThreadedLlmGateway", "serve_llm", "start_in_thread"]

_TIMEOUT = httpx.Timeout(connect=10.0, read=600.0, write=60.0, pool=30.0)


class LlmGatewayError(InfrastructureUnavailable):
    """The model gateway could not start."""

    default_hint = "check the gateway's listen address in airlock.yaml (is the port free?)"


@dataclass
class LlmGateway:
    """A running model gateway in the current event loop."""

    name: str
    address: tuple[str, int]
    proxy: LlmProxy
    _server: uvicorn.Server = field(repr=False)
    _task: asyncio.Task[None] = field(repr=False)
    _client: httpx.AsyncClient = field(repr=False)
    _sock: socket.socket = field(repr=False)

    @property
    def url(self) -> str:
        """``http://HOST:PORT``; OpenAI clients add ``/v1`` (see :func:`agent_env`)."""
        host, port = self.address
        return f"http://{host}:{port}"

    async def close(self) -> None:
        self._server.should_exit = True
        try:
            await self._task
        finally:
            await self._server.shutdown(sockets=[self._sock])
            await self._client.aclose()
            self._sock.close()


def held_key(config: LlmGatewayConfig, environ: Mapping[str, str]) -> str:
    """The API key from ``environ``; ConfigError naming the variable when it is missing."""
    key = environ.get(config.key_env, "")
    if not key:
        raise ConfigError(
            f"gateway {config.name}: the model API key variable {config.key_env} is not set",
            hint=f"set {config.key_env} in the job's environment (Airlock holds it; the agent "
            "gets a ticket), or name another variable with credential: {env: NAME}",
        )
    return key


def agent_env(config: LlmGatewayConfig, url: str, ticket: str) -> dict[str, str]:
    """The variables that point the agent's SDK at the gateway, with the ticket as its key."""
    if config.provider == "anthropic":
        return {"ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": ticket}
    return {"OPENAI_BASE_URL": url + "/v1", "OPENAI_API_KEY": ticket}


async def serve_llm(
    config: LlmGatewayConfig,
    *,
    masker: Masker,
    record: Record,
    approve: Approve | None,
    ticket: TicketCheck,
    environ: Mapping[str, str] | None = None,
    **_: Any,
) -> LlmGateway:
    """Start the gateway described by ``config``; returns once it accepts connections."""
    key = held_key(config, os.environ if environ is None else environ)
    masker.add_secret(key, "gateway-credential")
    client = httpx.AsyncClient(timeout=_TIMEOUT, follow_redirects=False, trust_env=False)
    proxy = LlmProxy(
        config,
        key=key,
        masker=masker,
        record=record,
        approve=approve,
        ticket=ticket,
        client=client,
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
            http="h11",
            date_header=False,
        )
    )
    server.config.load()
    server.lifespan = server.config.lifespan_class(server.config)
    await server.startup(sockets=[sock])
    task = asyncio.create_task(server.main_loop(), name=f"airlock-llm-{config.name}")
    host, port = sock.getsockname()[:2]
    return LlmGateway(config.name, (host, port), proxy, server, task, client, sock)


def _bind(config: LlmGatewayConfig) -> socket.socket:
    host, port = config.listen_host, config.listen_port
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise LlmGatewayError(
            f"gateway {config.name} cannot listen on {config.listen}: {exc.strerror}"
        ) from exc
    sock.listen(512)
    sock.setblocking(False)
    return sock


class ThreadedLlmGateway:
    """An :class:`LlmGateway` in its own thread and event loop (for ``airlock run``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, thread: threading.Thread, gw: LlmGateway):
        self._loop, self._thread, self.gateway = loop, thread, gw

    @property
    def url(self) -> str:
        return self.gateway.url

    def close(self, timeout: float = 10.0) -> None:
        if not self._thread.is_alive():
            return
        future = asyncio.run_coroutine_threadsafe(self.gateway.close(), self._loop)
        try:
            future.result(timeout)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)


def start_in_thread(config: LlmGatewayConfig, **kwargs: Any) -> ThreadedLlmGateway:
    """:func:`serve_llm` in a background thread; raises what it raises."""
    loop = asyncio.new_event_loop()
    started: Future[LlmGateway] = Future()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            started.set_result(loop.run_until_complete(serve_llm(config, **kwargs)))
        except BaseException as exc:
            started.set_exception(exc)
            loop.close()
            return
        loop.run_forever()
        loop.close()

    thread = threading.Thread(target=run, name=f"airlock-llm-{config.name}", daemon=True)
    thread.start()
    try:
        gateway = started.result(10.0)
    except (ConfigError, LlmGatewayError):
        thread.join()
        raise
    return ThreadedLlmGateway(loop, thread, gateway)
