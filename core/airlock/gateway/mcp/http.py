"""The MCP gateway's streamable-HTTP front: what ``airlock run`` gives the agent.

Airlock starts the stdio server itself (outside the agent's sandbox, with the variables it
needs), or talks to a streamable-HTTP ``upstream:`` (``upstream.py``), and serves the agent at
``http://127.0.0.1:PORT/mcp``: each POSTed JSON-RPC request goes
through the relay and its answer comes back as ``application/json``; notifications and
responses get ``202``. The ticket is the bearer token. Requests of different clients never
collide: ids are renumbered on the way to the server and restored on the way back. Messages the
server starts itself (progress, logging, sampling) are not relayed over HTTP in this version.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import threading
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future
from typing import Any

import uvicorn

from airlock.errors import ConfigError, InfrastructureUnavailable
from airlock.gateway.mcp.bridge import McpBridge
from airlock.gateway.mcp.relay import error_line
from airlock.gateway.mcp.transport import DEFAULT_CAP
from airlock.gateway.mcp.upstream import HttpUpstream
from airlock.gateway.tickets import TicketCheck, check_ticket
from airlock.mask import Masker
from airlock.policy.agent_gateways import McpGatewayConfig

__all__ = ["McpHttpFront", "ThreadedMcpGateway", "start_in_thread"]

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
PATH = "/mcp"


class McpGatewayError(InfrastructureUnavailable):
    """The MCP gateway could not start."""

    default_hint = "check the gateway's listen address and command in airlock.yaml"


class McpHttpFront:
    """ASGI app: streamable HTTP (JSON answers) in front of an :class:`McpBridge`."""

    def __init__(self, ticket: TicketCheck, cap: int = DEFAULT_CAP) -> None:
        self._ticket = ticket
        self._cap = cap
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.bridge: McpBridge | None = None
        self.upstream: HttpUpstream | None = None

    async def to_client(self, line: bytes) -> None:
        """A line for the agent: the answer to one waiting request (others are dropped)."""
        try:
            data = json.loads(line)
        except ValueError:
            return
        key = data.get("id") if isinstance(data, dict) else None
        waiting = self._waiting.pop(key, None) if isinstance(key, int) else None
        if waiting is not None and not waiting.done():
            waiting.set_result(data)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"].rstrip("/") != PATH:
            await _reply(send, 404, {"error": f"the MCP endpoint is {PATH}"})
            return
        if scope["method"] != "POST":
            await _reply(send, 405, {"error": "POST JSON-RPC messages to this endpoint"})
            return
        if not await self._authorized(scope):
            await _reply(send, 401, {"error": "missing or wrong gateway ticket (bearer token)"})
            return
        body = await _body(receive, self._cap)
        if body is None:
            await _reply(send, 413, _error(None, -32600, "message over the gateway's limit"))
            return
        if self.upstream is not None:
            status, answer, back = await self.upstream.exchange(body, _header_map(scope))
            await _reply(send, status, answer, back)
            return
        await self._message(body, send)

    async def _message(self, body: bytes, send: Send) -> None:
        assert self.bridge is not None
        try:
            data = json.loads(body)
        except ValueError:
            await self.bridge.from_client(body)  # recorded; answered below
            await _reply(send, 400, _error(None, -32700, "Airlock: not JSON"))
            return
        if not (isinstance(data, dict) and "method" in data and "id" in data):
            await self.bridge.from_client(body)
            await _reply(send, 202, None)
            return
        original, internal = data["id"], next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[internal] = future
        await self.bridge.from_client(json.dumps({**data, "id": internal}).encode() + b"\n")
        answer = await future
        await _reply(send, 200, {**answer, "id": original})

    async def _authorized(self, scope: Scope) -> bool:
        headers = {bytes(k).lower(): bytes(v) for k, v in scope["headers"]}
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        return await check_ticket(self._ticket, token.strip())


def _error(request_id: Any, code: int, message: str) -> dict[str, Any]:
    return dict(json.loads(error_line(request_id, code, message)))


async def _body(receive: Receive, cap: int) -> bytes | None:
    body = bytearray()
    while True:
        message = await receive()
        body += message.get("body", b"")
        if len(body) > cap:
            return None
        if not message.get("more_body", False):
            return bytes(body)


def _header_map(scope: Scope) -> dict[str, str]:
    return {bytes(k).decode("latin-1"): bytes(v).decode("latin-1") for k, v in scope["headers"]}


async def _reply(
    send: Send, status: int, data: Any, extra: Mapping[str, str] | None = None
) -> None:
    body = b"" if data is None else json.dumps(data, separators=(",", ":")).encode()
    headers = [(b"content-length", str(len(body)).encode())]
    headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (extra or {}).items()]
    if body:
        headers.append((b"content-type", b"application/json"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ThreadedMcpGateway:
    """The HTTP front and its stdio server, in their own thread and event loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        thread: threading.Thread,
        server: uvicorn.Server,
        closer: Callable[[], Awaitable[None]],
        address: tuple[str, int],
    ) -> None:
        self._loop, self._thread, self._server, self._closer = loop, thread, server, closer
        self.address = address

    @property
    def url(self) -> str:
        return f"http://{self.address[0]}:{self.address[1]}{PATH}"

    def close(self, timeout: float = 10.0) -> None:
        if not self._thread.is_alive():
            return

        async def stop() -> None:
            try:
                await self._closer()  # the server process first, while the loop runs
            finally:
                self._server.should_exit = True

        try:
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout)
        finally:
            self._thread.join(timeout)


def start_in_thread(
    config: McpGatewayConfig,
    *,
    masker: Masker,
    record: Callable[[str, Mapping[str, Any]], object],
    approve: Any,
    ticket: TicketCheck,
    environ: Mapping[str, str],
    **_: Any,
) -> ThreadedMcpGateway:
    """Start the stdio server and the HTTP front; returns once both run."""
    sock = _bind(config)
    loop = asyncio.new_event_loop()
    front = McpHttpFront(ticket)
    server = uvicorn.Server(
        uvicorn.Config(
            front,
            log_config=None,
            access_log=False,
            lifespan="off",
            http="h11",
            server_header=False,
            date_header=False,
        )
    )
    started: Future[Callable[[], Awaitable[None]]] = Future()

    async def main() -> None:
        closer: Callable[[], Awaitable[None]]
        if config.upstream is not None:
            front.upstream = _http_upstream(config, masker, record, approve, ticket, environ)
            closer = front.upstream.close
        else:
            bridge = McpBridge(
                config,
                masker=masker,
                record=record,
                approve=approve,
                session_id=ticket.session_id,
                environ=environ,
                to_client=front.to_client,
            )
            await bridge.start()
            front.bridge = bridge
            closer = bridge.close
        server.config.load()
        server.lifespan = server.config.lifespan_class(server.config)
        await server.startup(sockets=[sock])
        started.set_result(closer)
        await server.main_loop()
        await server.shutdown(sockets=[sock])

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(main())
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
        finally:
            sock.close()
            loop.close()

    thread = threading.Thread(target=run, name=f"airlock-mcp-{config.name}", daemon=True)
    thread.start()
    closer = started.result(30.0)
    host, port = sock.getsockname()[:2]
    return ThreadedMcpGateway(loop, thread, server, closer, (host, port))


def _http_upstream(
    config: McpGatewayConfig,
    masker: Masker,
    record: Callable[[str, Mapping[str, Any]], object],
    approve: Any,
    ticket: TicketCheck,
    environ: Mapping[str, str],
) -> HttpUpstream:
    cred = config.credential
    bearer = environ.get(cred.bearer_env, "") if cred and cred.bearer_env else None
    if cred and cred.bearer_env and not bearer:
        raise ConfigError(
            f"gateway {config.name}: the variable {cred.bearer_env} is not set",
            hint="set it in the job's environment (Airlock sends it to the MCP server only)",
        )
    return HttpUpstream(
        config,
        masker=masker,
        record=record,
        approve=approve,
        session_id=ticket.session_id,
        held=[bearer] if bearer else [],
        cap=DEFAULT_CAP,
        bearer=bearer,
    )


def _bind(config: McpGatewayConfig) -> socket.socket:
    host, port = config.listen_host, config.listen_port
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise McpGatewayError(
            f"gateway {config.name} cannot listen on {config.listen}: {exc.strerror}"
        ) from exc
    sock.listen(256)
    sock.setblocking(False)
    return sock
