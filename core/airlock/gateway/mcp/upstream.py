"""The MCP gateway in front of a streamable-HTTP MCP server (``upstream: URL``).

Each JSON-RPC message the agent POSTs goes through the relay (rules, recording); what is
forwarded is POSTed upstream with the agent's ``Mcp-*`` headers (session id, protocol version),
and the upstream's answer — a JSON body or an SSE stream of messages — goes back through the
relay, the answer to the agent's request as ``application/json`` with the upstream's ``Mcp-*``
headers. Messages the server starts itself on that stream are not relayed in this version.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx

from airlock.gateway.approvals import Approvals, Approve, tool_operation
from airlock.gateway.llm.sse import SseParser
from airlock.gateway.mcp.relay import Ask, McpRelay, Record, ToClient, ToServer, error_line
from airlock.mask import Masker
from airlock.policy.agent_gateways import McpGatewayConfig

__all__ = ["HttpUpstream"]

RecordFn = Callable[[str, Mapping[str, Any]], object]
Gone = Callable[[], Awaitable[object]]
_TIMEOUT = httpx.Timeout(connect=10.0, read=300.0, write=60.0, pool=30.0)
_INTERNAL = -32603


class HttpUpstream:
    """Relays one agent message at a time to the upstream server; answers what comes back."""

    def __init__(
        self,
        config: McpGatewayConfig,
        *,
        masker: Masker,
        record: RecordFn,
        approve: Approve | None,
        session_id: str,
        held: list[str],
        cap: int,
        bearer: str | None = None,
    ) -> None:
        assert config.upstream is not None
        self.config = config
        self.relay = McpRelay(config, masker, held)
        self._url = config.upstream
        self._masker, self._record = masker, record
        self._approvals = Approvals(approve)
        self._session_id, self._cap = session_id, cap
        self._bearer = bearer  # the upstream's own token, held here
        self._client = httpx.AsyncClient(timeout=_TIMEOUT, trust_env=False)

    async def exchange(
        self, body: bytes, headers: Mapping[str, str], gone: Gone | None = None
    ) -> tuple[int, dict[str, Any] | None, dict[str, str]]:
        """(status, JSON answer or None, Mcp-* headers for the agent) for one agent message.
        ``gone()`` finishes when the agent disconnects: a tool call held for approval is then
        refused (and its approval cancelled), never sent."""
        wanted = _request_id(body)
        answer: dict[str, Any] | None = None
        status, back = 202, dict[str, str]()
        queue = list(self.relay.from_client(body))
        while queue:
            action = queue.pop(0)
            if isinstance(action, Record):
                self._record(action.type, action.data)
            elif isinstance(action, ToClient):
                found = _match(action.line, wanted)
                answer = answer or found
            elif isinstance(action, Ask):
                queue += self.relay.decided(action, await self._ask(action, gone))
            elif isinstance(action, ToServer):
                status, back, lines = await self._post(action.line, headers)
                for line in lines:
                    queue += self.relay.from_server(line)
        if wanted is not None and answer is None:  # the upstream never answered it
            queue_line = error_line(wanted, _INTERNAL, "Airlock: the MCP server gave no answer")
            answer = json.loads(queue_line)
        return (200 if answer is not None else status), answer, back

    async def _post(
        self, line: bytes, headers: Mapping[str, str]
    ) -> tuple[int, dict[str, str], list[bytes]]:
        sent = {k: v for k, v in headers.items() if k.lower().startswith("mcp-")}
        sent |= {"content-type": "application/json",
                 "accept": "application/json, text/event-stream"}  # fmt: skip
        if self._bearer:
            sent["authorization"] = f"Bearer {self._bearer}"
        try:
            async with self._client.stream("POST", self._url, content=line, headers=sent) as r:
                back = {k: v for k, v in r.headers.items() if k.lower().startswith("mcp-")}
                lines = await self._read(r)
                return r.status_code, back, lines
        except httpx.HTTPError as exc:
            what = f"upstream unreachable: {type(exc).__name__}"
            self._record("mcp.response", {"gateway": self.config.name, "error": what})
            request_id = _request_id(line)
            if request_id is None:
                return 502, {}, []
            message = "Airlock: the MCP server could not be reached"
            return 502, {}, [error_line(request_id, _INTERNAL, message)]

    async def _read(self, response: httpx.Response) -> list[bytes]:
        if "text/event-stream" in response.headers.get("content-type", ""):
            parser, lines, size = SseParser(), [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > self._cap:
                    return [b'{"oversized": true}']
                lines += [e.data.encode() for e in parser.feed(chunk) if e.data.strip()]
            return lines + [e.data.encode() for e in parser.close() if e.data.strip()]
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > self._cap:
                return [b'{"oversized": true}']
        return [bytes(body)] if body.strip() else []

    async def _ask(self, ask: Ask, gone: Gone | None) -> bool:
        op = tool_operation(
            self._masker,
            ask.tool,
            ask.arguments,
            rule_id=ask.decision.rule_id,
            gateway=self.config.name,
            session_id=self._session_id,
        )
        asked = await self._approvals.ask(op, gone=gone)
        return asked.approved

    def cancel_holds(self) -> int:
        """The session is ending: every tool call held for approval is refused."""
        return self._approvals.cancel_all()

    async def close(self) -> None:
        self.cancel_holds()
        await self._client.aclose()


def _request_id(body: bytes) -> Any:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data.get("id") if isinstance(data, dict) and "method" in data else None


def _match(line: bytes, wanted: Any) -> dict[str, Any] | None:
    try:
        data = json.loads(line)
    except ValueError:
        return None
    answers = isinstance(data, dict) and ("result" in data or "error" in data)
    if answers and (data.get("id") == wanted or (data.get("id") is None and "error" in data)):
        return dict(data)
    return None
