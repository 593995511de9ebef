"""A CONNECT tunnel's bytes, once the CONNECT and SNI checks passed, in Python: moved untouched
both ways. The compiled relay (``native.py``) does this when it is built; this is its twin.

The two transports are joined by :class:`_Pipe` protocols (one preallocated buffer per
direction). Flow control: a slow reader pauses the other side; a client's EOF is passed on as
a half-close, and the tunnel ends when the upstream side ends. (``splice(2)`` was tried here and
dropped: it was slower in wall time and in CPU than these pipes, bench/RESULTS.md.)
"""

from __future__ import annotations

import asyncio
from typing import Protocol

__all__ = ["Counts", "relay", "take_buffer"]

_CHUNK = 256 * 1024


class Counts(Protocol):
    """Where the relay adds the bytes it moved."""

    up: int
    down: int


async def relay(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    upstream: asyncio.StreamWriter,
    counts: Counts,
) -> None:
    """Move bytes between the client (``reader``/``writer``) and ``upstream`` until it ends."""
    await _Pipes(reader, writer.transport, up_reader, upstream.transport, counts).run()


def take_buffer(stream: asyncio.StreamReader) -> bytes:
    """What ``stream`` read ahead and nobody consumed yet (emptied)."""
    buffer = getattr(stream, "_buffer", None)  # asyncio keeps what it read ahead here
    if not isinstance(buffer, bytearray) or not buffer:
        return b""
    data = bytes(buffer)
    buffer.clear()
    return data


class _Pipes:
    """Both directions through :class:`_Pipe` protocols; ``run`` returns when it ended."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        client_t: asyncio.BaseTransport,
        up_reader: asyncio.StreamReader,
        upstream_t: asyncio.BaseTransport,
        counts: Counts,
    ) -> None:
        self.streams = (reader, up_reader)
        self.transports = (client_t, upstream_t)
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pipes = (
            _Pipe(upstream_t, counts, "up", self, half_close=True),
            _Pipe(client_t, counts, "down", self, half_close=False),
        )

    async def run(self) -> None:
        for stream, transport, pipe in zip(self.streams, self.transports, self.pipes, strict=True):
            buffered = take_buffer(stream)
            transport.set_protocol(pipe)
            if buffered:
                pipe.forward(buffered)
            if stream.at_eof():
                pipe.eof_received()
            elif isinstance(transport, asyncio.ReadTransport) and not transport.is_reading():
                transport.resume_reading()
        await self.done

    def finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


class _Pipe(asyncio.BufferedProtocol):
    """Bytes read from one transport are written to ``peer``; when ``peer``'s buffer fills up,
    reading from this side pauses (the peer's protocol is the other pipe, which asks us).

    Reads land in one preallocated buffer per direction (no new object per read); the peer's
    ``write`` sends at once or copies what it could not send, so the buffer is free again."""

    def __init__(
        self,
        peer: asyncio.BaseTransport,
        counts: Counts,
        direction: str,
        tunnel: _Pipes,
        *,
        half_close: bool,
    ) -> None:
        assert isinstance(peer, asyncio.WriteTransport)
        self.peer = peer
        self.counts = counts
        self.up = direction == "up"
        self.tunnel = tunnel
        self.half_close = half_close
        self.buffer = memoryview(bytearray(_CHUNK))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.forward(self.buffer[:nbytes])

    def forward(self, data: bytes | memoryview) -> None:
        if self.up:
            self.counts.up += len(data)
        else:
            self.counts.down += len(data)
        self.peer.write(data)

    def eof_received(self) -> bool:
        if self.half_close and self.peer.can_write_eof():
            self.peer.write_eof()
            return True
        self.tunnel.finish()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel.finish()

    def pause_writing(self) -> None:  # our transport's buffer is full: stop feeding it
        other = self.peer
        if isinstance(other, asyncio.ReadTransport):
            other.pause_reading()

    def resume_writing(self) -> None:
        other = self.peer
        if isinstance(other, asyncio.ReadTransport) and not other.is_closing():
            other.resume_reading()
