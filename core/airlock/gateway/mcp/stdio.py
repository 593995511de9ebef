"""``airlock mcp -- SERVER_CMD``: the agent starts us as its stdio MCP server; we start the real
one and relay (see ``relay.py``). Runs until the agent closes our stdin."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, BinaryIO

from airlock.gateway.mcp.bridge import McpBridge
from airlock.gateway.mcp.transport import DEFAULT_CAP, Line, read_line

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
    source = stdin or sys.stdin.buffer
    write_lock = asyncio.Lock()
    writer = await _pipe_writer(loop, out) if _pollable(out) else None

    async def to_client(line: bytes) -> None:
        async with write_lock:
            if writer is not None:
                writer.write(line if line.endswith(b"\n") else line + b"\n")
                await writer.drain()
            else:
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
    await bridge.start()  # a server that cannot start fails before the agent is read
    next_line = await _line_reader(loop, source, cap)
    try:
        while (line := await next_line()) is not None:
            if line.oversized:
                await to_client(_too_large(line.size))
            else:
                await bridge.from_client(line.data)
    finally:
        await bridge.close()
    return 0


def _pollable(stream: BinaryIO) -> bool:
    """A pipe or a socket (the event loop can wait on it); a file or /dev/null is not."""
    try:
        mode = os.fstat(stream.fileno()).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


async def _pipe_writer(loop: asyncio.AbstractEventLoop, out: BinaryIO) -> asyncio.StreamWriter:
    pipe = os.fdopen(os.dup(out.fileno()), "wb")
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, pipe)
    return asyncio.StreamWriter(transport, protocol, None, loop)


async def _line_reader(
    loop: asyncio.AbstractEventLoop, source: BinaryIO, cap: int
) -> Callable[[], Awaitable[Line | None]]:
    """Lines from the agent: from the event loop for a pipe, from a thread otherwise."""
    if _pollable(source):
        reader = asyncio.StreamReader(limit=cap)
        pipe = os.fdopen(os.dup(source.fileno()), "rb")
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
        return lambda: read_line(reader, cap)
    return lambda: loop.run_in_executor(None, _read_line, source, cap)


def _read_line(source: BinaryIO, cap: int) -> Line | None:
    """One line of at most ``cap`` bytes (a longer one is read to its end and discarded)."""
    data = source.readline(cap + 1)
    if not data:
        return None
    if len(data) <= cap or data.endswith(b"\n"):
        return Line(data)
    size = len(data)
    while not data.endswith(b"\n"):
        data = source.readline(1 << 20)
        if not data:
            break
        size += len(data)
    return Line(b"", True, size)


def _write(out: BinaryIO, line: bytes) -> None:
    out.write(line if line.endswith(b"\n") else line + b"\n")
    out.flush()


def _too_large(size: int) -> bytes:
    from airlock.gateway.mcp.relay import error_line

    return error_line(None, -32600, f"Airlock: a message of {size} bytes is over the limit")
