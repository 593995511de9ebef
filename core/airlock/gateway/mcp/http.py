"""The MCP gateway's streamable-HTTP front: what ``airlock run`` gives the agent.

Airlock starts the stdio server itself (outside the agent's sandbox, with the variables it
needs), or talks to a streamable-HTTP ``upstream:`` (``upstream.py``), and serves the agent at
``http://127.0.0.1:PORT/mcp``: each POSTed JSON-RPC request goes
through the relay and its answer comes back as ``application/json``; notifications and
responses get ``202``. The ticket is the bearer token. Requests of different clients never
collide: ids are renumbered on the way to the server and restored on the way back. Messages a
stdio server starts itself (progress, logging, sampling requests) go to every agent listening
on a ``GET`` of the endpoint (``text/event-stream``, as the Streamable HTTP transport has it);
the agent POSTs its answers to the server's requests like any message. With no listener they
are dropped. In front of an HTTP ``upstream:`` a ``GET`` gets ``405``.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from airlock.errors import ConfigError, InfrastructureUnavailable
from airlock.gateway.mcp.bridge import McpBridge
from airlock.gateway.mcp.relay import DuplicateKey, error_line, parse_message, refusal
from airlock.gateway.mcp.transport import DEFAULT_CAP
from airlock.gateway.mcp.upstream import HttpUpstream
from airlock.gateway.serving import AsgiServer, ThreadedGateway, bind, serve_asgi
from airlock.gateway.serving import start_in_thread as _start
from airlock.gateway.tickets import TicketCheck, check_ticket
from airlock.mask import Masker
from airlock.policy.agent_gateways import McpGatewayConfig

__all__ = [
    "McpGateway",
    "McpGatewayError",
    "McpHttpFront",
    "ThreadedMcpGateway",
    "serve_mcp",
    "start_in_thread",
]

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
PATH = "/mcp"
_LISTEN_BACKLOG = 1000


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
        self._listeners: set[asyncio.Queue[bytes | None]] = set()
        self.bridge: McpBridge | None = None
        self.upstream: HttpUpstream | None = None

    async def to_client(self, line: bytes) -> None:
        """A line for the agent: the answer to one waiting request, or a message the server
        started (to every listening agent)."""
        try:
            data = json.loads(line)
        except ValueError:
            return
        if not isinstance(data, dict):
            return
        if "method" in data:  # a notification or a request of the server's own
            for queue in self._listeners:
                if queue.qsize() < _LISTEN_BACKLOG:  # a listener that does not read loses some
                    queue.put_nowait(line.rstrip(b"\n"))
            return
        key = data.get("id")
        waiting = self._waiting.pop(key, None) if isinstance(key, int) else None
        if waiting is not None and not waiting.done():
            waiting.set_result(data)

    def close_streams(self) -> None:
        """End every listening stream (the gateway is stopping)."""
        for queue in self._listeners:
            queue.put_nowait(None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"].rstrip("/") != PATH:
            await _reply(send, 404, {"error": f"the MCP endpoint is {PATH}"})
            return
        if scope["method"] not in ("POST", "GET"):
            await _reply(send, 405, {"error": "POST JSON-RPC messages to this endpoint"})
            return
        if not await self._authorized(scope):
            await _reply(send, 401, {"error": "missing or wrong gateway ticket (bearer token)"})
            return
        if scope["method"] == "GET":
            await self._listen(scope, receive, send)
            return
        body = await _body(receive, self._cap)
        if body is None:
            await _reply(send, 413, _error(None, -32600, "message over the gateway's limit"))
            return
        if self.upstream is not None:
            await self._upstream(body, scope, receive, send)
        else:
            await self._message(body, send)

    async def _upstream(self, body: bytes, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.upstream is not None
        gone = functools.partial(_disconnected, receive)
        data = _parsed(body)
        original: Any = None
        if _renumbered(data):  # two agents' ids never meet in the relay
            original, internal = data["id"], next(self._ids)
            body = json.dumps({**data, "id": internal}).encode()
        status, answer, back = await self.upstream.exchange(body, _header_map(scope), gone)
        if answer is not None and original is not None:
            answer = {**answer, "id": original}
        await _reply(send, status, answer, back)

    async def _message(self, body: bytes, send: Send) -> None:
        assert self.bridge is not None
        try:
            data = parse_message(body)
        except ValueError as exc:
            await self.bridge.from_client(body)  # recorded (and refused); answered below
            code, what = (
                (-32600, f"refused: {exc}")
                if isinstance(exc, DuplicateKey)
                else (-32700, "not JSON")
            )
            await _reply(send, 400, _error(None, code, f"Airlock: {what}"))
            return
        if not _renumbered(data):
            await self.bridge.from_client(body)  # recorded, and refused or passed on
            problem = refusal(data)
            if problem is None:
                await _reply(send, 202, None)
            else:
                await _reply(send, 400, _error(None, -32600, f"Airlock: refused: {problem}"))
            return
        original, internal = data["id"], next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[internal] = future
        await self.bridge.from_client(json.dumps({**data, "id": internal}).encode() + b"\n")
        answer = await future
        await _reply(send, 200, {**answer, "id": original})

    async def _listen(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The server's own messages as server-sent events, until the agent leaves."""
        if self.bridge is None:
            await _reply(send, 405, {"error": "this gateway relays no server-initiated messages"})
            return
        if "text/event-stream" not in _header_map(scope).get("accept", ""):
            await _reply(send, 406, {"error": "GET this endpoint with Accept: text/event-stream"})
            return
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._listeners.add(queue)
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b": airlock\n\n", "more_body": True})
            while True:
                line = asyncio.ensure_future(queue.get())
                await asyncio.wait({line, gone}, return_when=asyncio.FIRST_COMPLETED)
                message = line.result() if line.done() else None
                if message is None:
                    line.cancel()
                    break
                event = b"event: message\ndata: " + message + b"\n\n"
                await send({"type": "http.response.body", "body": event, "more_body": True})
            if not gone.done():
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self._listeners.discard(queue)
            gone.cancel()

    async def _authorized(self, scope: Scope) -> bool:
        headers = {bytes(k).lower(): bytes(v) for k, v in scope["headers"]}
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        return await check_ticket(self._ticket, token.strip())


def _parsed(body: bytes) -> Any:
    try:
        return parse_message(body)
    except ValueError:
        return None  # the relay answers it


def _renumbered(data: Any) -> bool:
    """A request (with a usable id): it gets an id of the gateway's own on the way in."""
    if not (isinstance(data, dict) and "method" in data):
        return False
    request_id = data.get("id")
    return isinstance(request_id, int | str) and not isinstance(request_id, bool)


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


async def _disconnected(receive: Receive) -> None:
    """Returns once the client has gone (the body was read: nothing else can come)."""
    while (await receive())["type"] != "http.disconnect":
        pass


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


@dataclass
class McpGateway:
    """The HTTP front and its server (a stdio process or an HTTP upstream), running."""

    front: McpHttpFront
    _server: AsgiServer = field(repr=False)
    _closer: Callable[[], Awaitable[None]] = field(repr=False)

    @property
    def address(self) -> tuple[str, int]:
        return self._server.address

    @property
    def url(self) -> str:
        return self._server.url(PATH)

    async def close(self) -> None:
        try:
            await self._closer()  # the server process first, while the front still runs
        finally:
            self.front.close_streams()
            await self._server.stop()


ThreadedMcpGateway = ThreadedGateway[McpGateway]


async def serve_mcp(
    config: McpGatewayConfig,
    *,
    masker: Masker,
    record: Callable[[str, Mapping[str, Any]], object],
    approve: Any,
    ticket: TicketCheck,
    environ: Mapping[str, str],
    **_: Any,
) -> McpGateway:
    """Start the stdio server (or the client of the HTTP upstream) and the HTTP front."""
    sock = bind(config, McpGatewayError)
    front = McpHttpFront(ticket)
    closer: Callable[[], Awaitable[None]]
    try:
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
    except BaseException:
        sock.close()
        raise
    server = await serve_asgi(front, sock, name=f"airlock-mcp-{config.name}")
    return McpGateway(front, server, closer)


def start_in_thread(config: McpGatewayConfig, **kwargs: Any) -> ThreadedMcpGateway:
    """:func:`serve_mcp` in a background thread; returns once both run."""
    return _start(
        lambda: serve_mcp(config, **kwargs),
        name=f"airlock-mcp-{config.name}",
        timeout=30.0,
        uvloop=False,  # it runs the stdio server as a child process
    )


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
