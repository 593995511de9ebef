"""A CONNECT tunnel's bytes, once the CONNECT and SNI checks passed: moved untouched both ways.

A tunnel starts with the two transports joined by :class:`_Pipe` protocols (one preallocated
buffer per direction): cheapest to set up, which is what a short exchange costs. On Linux, once
one direction has moved 1 MiB, the tunnel moves to ``splice(2)``: each direction becomes
``socket -> pipe -> socket`` (no copy to user space), driven by the event loop's reader/writer
callbacks, so Python runs once per read the kernel has ready and the bytes never enter it.
Either way: flow control (a slow reader pauses the other side), a
client's EOF is passed on as a half-close, and the tunnel ends when the upstream side ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
from typing import Protocol

__all__ = ["Counts", "relay"]

_CHUNK = 64 * 1024  # under malloc's mmap threshold: no fresh zeroed pages per tunnel
_PIPE_SIZE = 1 << 20
_SPLICE_AFTER = 1 << 20  # bytes one way before a tunnel moves to splice
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)


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
    client_sock = writer.get_extra_info("socket")
    upstream_sock = upstream.get_extra_info("socket")
    can_splice = hasattr(os, "splice") and client_sock is not None and upstream_sock is not None
    tunnel = _Pipes(reader, writer.transport, up_reader, upstream.transport, counts, can_splice)
    if await tunnel.run() == "splice":
        await _splice_both(client_sock.fileno(), upstream_sock.fileno(), counts)


def take_buffer(stream: asyncio.StreamReader) -> bytes:
    buffer = getattr(stream, "_buffer", None)  # asyncio keeps what it read ahead here
    if not isinstance(buffer, bytearray) or not buffer:
        return b""
    data = bytes(buffer)
    buffer.clear()
    return data


async def _splice_both(client_fd: int, upstream_fd: int, counts: Counts) -> None:
    # The transports keep their sockets (and close them later); the loop watches duplicates,
    # since it refuses a reader on a descriptor a transport owns. Their reading is paused.
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    client, up = os.dup(client_fd), os.dup(upstream_fd)
    directions: list[_Splice] = []
    try:
        directions.append(_Splice(loop, client, up, counts, "up", done))
        directions.append(_Splice(loop, up, client, counts, "down", done))
        for direction in directions:
            direction.start()
        await done
    finally:
        for direction in directions:
            direction.stop()
        os.close(client)
        os.close(up)


class _Splice:
    """One direction, ``src -> pipe -> dst``: read what the kernel has when ``src`` is readable,
    pass it on; when ``dst`` is full, stop reading ``src`` until ``dst`` is writable again."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        src: int,
        dst: int,
        counts: Counts,
        direction: str,
        done: asyncio.Future[None],
    ) -> None:
        self.loop, self.src, self.dst = loop, src, dst
        self.counts, self.up, self.done = counts, direction == "up", done
        self.pipe_r, self.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._grow()  # 16 slots by default; one slot per TCP fragment: small moves
        self.pending = 0  # bytes in the pipe, not yet in dst
        self.state = "idle"  # reading | writing | stopped

    def start(self) -> None:
        self.state = "reading"
        self.loop.add_reader(self.src, self._readable)

    def stop(self) -> None:
        if self.state == "reading":
            self.loop.remove_reader(self.src)
        elif self.state == "writing":
            self.loop.remove_writer(self.dst)
        self.state = "stopped"
        os.close(self.pipe_r)
        os.close(self.pipe_w)

    def _readable(self) -> None:
        try:
            moved = os.splice(self.src, self.pipe_w, _PIPE_SIZE, flags=_SPLICE_FLAGS)
        except BlockingIOError:
            return
        except OSError:
            self._end()
            return
        if moved == 0:
            self._eof()
            return
        if self.up:
            self.counts.up += moved
        else:
            self.counts.down += moved
        self.pending = moved
        self._flush()

    def _grow(self) -> None:
        with contextlib.suppress(OSError):  # over the user's pipe quota: it keeps its size
            fcntl.fcntl(self.pipe_w, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)

    def _flush(self) -> None:
        while self.pending:
            try:
                self.pending -= os.splice(self.pipe_r, self.dst, self.pending, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                if self.state == "reading":  # dst is full: stop reading until it drains
                    self.loop.remove_reader(self.src)
                    self.loop.add_writer(self.dst, self._flush)
                    self.state = "writing"
                return
            except OSError:
                self._end()
                return
        if self.state == "writing":
            self.loop.remove_writer(self.dst)
            self.loop.add_reader(self.src, self._readable)
            self.state = "reading"

    def _eof(self) -> None:
        self.loop.remove_reader(self.src)
        self.state = "idle"
        if self.up:  # the client finished sending: half-close, the answer may still come
            try:
                with socket.socket(fileno=os.dup(self.dst)) as sock:
                    sock.shutdown(socket.SHUT_WR)
            except OSError:
                self._end()
            return
        self._end()

    def _end(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


class _Pipes:
    """Both directions through :class:`_Pipe` protocols; once one direction has moved
    ``_SPLICE_AFTER`` bytes (a bulk transfer, not a short exchange, which would pay more to set
    up splicing than it saves), the tunnel moves to splice when nothing waits in either
    transport's write buffer and neither side has ended: ``run`` then answers ``"splice"``."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        client_t: asyncio.BaseTransport,
        up_reader: asyncio.StreamReader,
        upstream_t: asyncio.BaseTransport,
        counts: Counts,
        can_splice: bool,
    ) -> None:
        self.streams = (reader, up_reader)
        self.transports = (client_t, upstream_t)
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.can_splice = can_splice
        self.eof_seen = False
        self.pipes = (
            _Pipe(upstream_t, counts, "up", self, half_close=True),
            _Pipe(client_t, counts, "down", self, half_close=False),
        )

    async def run(self) -> str:
        for stream, transport, pipe in zip(self.streams, self.transports, self.pipes, strict=True):
            buffered = take_buffer(stream)
            transport.set_protocol(pipe)
            if buffered:
                pipe.forward(buffered)
            if stream.at_eof():
                pipe.eof_received()
            elif isinstance(transport, asyncio.ReadTransport) and not transport.is_reading():
                transport.resume_reading()
        return await self.done

    def maybe_splice(self) -> None:
        if not self.can_splice or self.eof_seen or self.done.done():
            return
        for transport in self.transports:
            if not isinstance(transport, asyncio.Transport):
                return
            if transport.is_closing() or transport.get_write_buffer_size():
                return
        for transport in self.transports:
            assert isinstance(transport, asyncio.Transport)
            if transport.is_reading():
                transport.pause_reading()
        self.done.set_result("splice")

    def finish(self) -> None:
        if not self.done.done():
            self.done.set_result("done")


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
            moved = self.counts.up
        else:
            self.counts.down += len(data)
            moved = self.counts.down
        self.peer.write(data)
        if moved >= _SPLICE_AFTER:
            self.tunnel.maybe_splice()

    def eof_received(self) -> bool:
        self.tunnel.eof_seen = True
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
