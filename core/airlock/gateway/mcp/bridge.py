"""One agent ↔ one stdio MCP server, through the relay: the piece both fronts share.

bridge = McpBridge(config, masker=m, record=w.append, approve=a, session_id=s,
                   environ=os.environ, to_client=write_line)
await bridge.start()            # starts the server with its held variables
await bridge.from_client(line)  # every line the agent sends
await bridge.close()
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from airlock.gateway.approvals import Approvals, Approve, tool_operation
from airlock.gateway.mcp.relay import Ask, McpRelay, Record, ToClient, ToServer
from airlock.gateway.mcp.transport import DEFAULT_CAP, Line, ServerProcess, server_environment
from airlock.mask import Masker
from airlock.policy.agent_gateways import McpGatewayConfig

__all__ = ["McpBridge"]

RecordFn = Callable[[str, Mapping[str, Any]], object]


class McpBridge:
    """Drives an :class:`McpRelay` between a front (stdio or HTTP) and a stdio server."""

    def __init__(
        self,
        config: McpGatewayConfig,
        *,
        masker: Masker,
        record: RecordFn,
        approve: Approve | None,
        session_id: str,
        environ: Mapping[str, str],
        to_client: Callable[[bytes], Awaitable[None]],
        command: Sequence[str] | None = None,
        cap: int = DEFAULT_CAP,
    ) -> None:
        names = config.credential.env if config.credential else ()
        self._env = server_environment(environ, names)
        held = [environ[n] for n in names]
        self.config = config
        self.relay = McpRelay(config, masker, held)
        self._masker, self._record = masker, record
        self._approvals = Approvals(approve)
        self._session_id, self._to_client = session_id, to_client
        self._server = ServerProcess(
            list(command or config.command), self._env, self._from_server, self._exited, cap
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self.exited = asyncio.Event()

    async def start(self) -> None:
        await self._server.start()

    async def from_client(self, line: bytes) -> None:
        await self._dispatch(self.relay.from_client(line))

    async def _from_server(self, line: Line) -> None:
        if line.oversized:
            await self._dispatch(self.relay.oversized(line.data, line.size))
        else:
            await self._dispatch(self.relay.from_server(line.data))

    async def _exited(self, status: int | None) -> None:
        await self._dispatch(self.relay.server_exited(status))
        self.exited.set()

    async def _dispatch(self, actions: Sequence[Any]) -> None:
        for action in actions:
            if isinstance(action, Record):
                self._record(action.type, action.data)
            elif isinstance(action, ToClient):
                await self._to_client(action.line)
            elif isinstance(action, ToServer):
                await self._server.send(action.line)
            elif isinstance(action, Ask):
                task = asyncio.create_task(self._ask(action))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _ask(self, ask: Ask) -> None:
        op = tool_operation(
            self._masker,
            ask.tool,
            ask.arguments,
            rule_id=ask.decision.rule_id,
            gateway=self.config.name,
            session_id=self._session_id,
        )
        asked = await self._approvals.ask(op)
        if asked.outcome != "ended":  # closing: the agent's side is going away too
            await self._dispatch(self.relay.decided(ask, asked.approved))

    async def close(self) -> None:
        self._approvals.cancel_all()
        for task in list(self._tasks):  # one that has not started asking yet
            task.cancel()
        await self._server.close()
