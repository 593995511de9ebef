"""A CONNECT tunnel's bytes, once the CONNECT and SNI checks passed: moved untouched both ways.

On Linux the bytes never enter Python: each direction is ``socket -> pipe -> socket`` with
``splice(2)`` (no copy to user space), driven by the event loop's reader/writer callbacks, so
Python runs once per read the kernel has ready, whatever its size. Elsewhere (or when a side
already ended) the two transports are joined with :class:`_Pipe` protocols (one preallocated
buffer per direction). Either way: flow control (a slow reader pauses the other side), a
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

_CHUNK = 256 * 1024
_PIPE_SIZE = 1 << 20
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
    client_t, upstream_t = writer.transport, upstream.transport
    for transport in (client_t, upstream_t):  # from here on, nothing reads into the streams
        if isinstance(transport, asyncio.ReadTransport):
            transport.pause_reading()
    early_up, early_down = _take_buffer(reader), _take_buffer(up_reader)
    if early_up:
        upstream.write(early_up)
        counts.up += len(early_up)
    if early_down:
        writer.write(early_down)
        counts.down += len(early_down)
    await upstream.drain()
    await writer.drain()
    ended = reader.at_eof() or up_reader.at_eof()
    buffered = client_t.get_write_buffer_size() or upstream_t.get_write_buffer_size()
    client_sock = writer.get_extra_info("socket")
    upstream_sock = upstream.get_extra_info("socket")
    if hasattr(os, "splice") and not ended and not buffered and client_sock and upstream_sock:
        await _splice_both(client_sock.fileno(), upstream_sock.fileno(), counts)
    else:
        await _pipe_both(reader, client_t, up_reader, upstream_t, counts)


def _take_buffer(stream: asyncio.StreamReader) -> bytes:
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


async def _pipe_both(
    reader: asyncio.StreamReader,
    client_t: asyncio.BaseTransport,
    up_reader: asyncio.StreamReader,
    upstream_t: asyncio.BaseTransport,
    counts: Counts,
) -> None:
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    to_upstream = _Pipe(upstream_t, counts, "up", done, half_close=True)
    to_client = _Pipe(client_t, counts, "down", done, half_close=False)
    for stream, transport, pipe in (
        (reader, client_t, to_upstream),
        (up_reader, upstream_t, to_client),
    ):
        transport.set_protocol(pipe)
        if stream.at_eof():
            pipe.eof_received()
        elif isinstance(transport, asyncio.ReadTransport) and not transport.is_reading():
            transport.resume_reading()
    await done


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
        done: asyncio.Future[None],
        *,
        half_close: bool,
    ) -> None:
        assert isinstance(peer, asyncio.WriteTransport)
        self.peer = peer
        self.counts = counts
        self.direction = direction
        self.done = done
        self.half_close = half_close
        self.buffer = memoryview(bytearray(_CHUNK))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        if self.direction == "up":
            self.counts.up += nbytes
        else:
            self.counts.down += nbytes
        self.peer.write(self.buffer[:nbytes])

    def eof_received(self) -> bool:
        if self.half_close and self.peer.can_write_eof():
            self.peer.write_eof()
            return True
        self._finish()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish()

    def pause_writing(self) -> None:  # our transport's buffer is full: stop feeding it
        other = self.peer
        if isinstance(other, asyncio.ReadTransport):
            other.pause_reading()

    def resume_writing(self) -> None:
        other = self.peer
        if isinstance(other, asyncio.ReadTransport) and not other.is_closing():
            other.resume_reading()

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)
