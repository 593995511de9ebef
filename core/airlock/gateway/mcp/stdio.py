"""``airlock mcp -- SERVER_CMD``: the agent starts us as its stdio MCP server; we start the real
one and relay (see ``relay.py``). Runs until the agent closes our stdin."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, BinaryIO

from airlock.gateway.mcp.bridge import McpBridge
from airlock.gateway.mcp.transport import DEFAULT_CAP, read_line

__all__ = ["serve_stdio"]


async def serve_stdio(
    config: Any,
    *,
    masker: Any,
    record: Callable[[str, Mapping[str, Any]], object],
    approve: Callable[[Any], Awaitable[bool]] | None,
    session_id: str,
    environ: Mapping[str, str],
    stdin: BinaryIO | None = None,
    stdout: BinaryIO | None = None,
    cap: int = DEFAULT_CAP,
) -> int:
    """Relay between our stdin/stdout (the agent) and the server; returns 0."""
    loop = asyncio.get_running_loop()
    out = stdout or sys.stdout.buffer
    write_lock = asyncio.Lock()

    async def to_client(line: bytes) -> None:
        async with write_lock:
            await loop.run_in_executor(None, _write, out, line)

    bridge = McpBridge(
        config,
        masker=masker,
        record=record,
        approve=approve,
        session_id=session_id,
        environ=environ,
        to_client=to_client,
        cap=cap,
    )
    reader = asyncio.StreamReader(limit=cap)
    source = stdin or sys.stdin.buffer
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(os.dup(source.fileno()), "rb")
    )
    await bridge.start()
    try:
        while (line := await read_line(reader, cap)) is not None:
            if line.oversized:
                await to_client(_too_large(line.size))
            else:
                await bridge.from_client(line.data)
    finally:
        transport.close()
        await bridge.close()
    return 0


def _write(out: BinaryIO, line: bytes) -> None:
    out.write(line if line.endswith(b"\n") else line + b"\n")
    out.flush()


def _too_large(size: int) -> bytes:
    from airlock.gateway.mcp.relay import error_line

    return error_line(None, -32600, f"Airlock: a message of {size} bytes is over the limit")
