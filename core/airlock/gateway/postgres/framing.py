"""PostgreSQL v3 wire protocol: delimiting messages in a byte stream (sans-I/O).

:class:`FrontendParser` / :class:`BackendParser` delimit and decode; :class:`Framer` only
delimits (type byte, length), for a relay that forwards most messages as they came."""

from __future__ import annotations

import struct
from collections.abc import Iterator

from airlock.gateway.postgres.decode import _decode_startup, decode_backend, decode_frontend
from airlock.gateway.postgres.messages import (
    MAX_MESSAGE,
    MAX_STARTUP,
    Message,
    ProtocolError,
    StartupMessage,
)
from airlock.gateway.postgres.rowpath import Frame, type_table
from airlock.gateway.postgres.rowpath import split as split_frames

__all__ = [
    "BACKEND_TYPES",
    "FRONTEND_TYPES",
    "BackendParser",
    "Frame",
    "Framer",
    "FrontendParser",
]


class _Parser:
    """Framing shared by both directions: 1 type byte + int32 length (including itself)."""

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self._buf = bytearray()
        self._max = max_message
        self.closed = False

    def feed(self, data: bytes) -> None:
        """Add received bytes; read messages by iterating over the parser."""
        self._buf += data

    def __iter__(self) -> Iterator[Message]:
        while True:
            message = self.next_message()
            if message is None:
                return
            yield message

    def next_message(self) -> Message | None:
        """The next complete message, or None until more bytes arrive."""
        buf = self._buf
        if len(buf) < 5:
            return None
        kind = chr(buf[0])
        (length,) = struct.unpack_from("!i", buf, 1)
        if length < 4 or length > self._max:
            raise ProtocolError(f"message {kind!r} has length {length}, outside 4..{self._max}")
        if len(buf) < length + 1:
            return None
        raw = bytes(buf[: length + 1])
        del buf[: length + 1]
        return self._decode(kind, raw)

    def _decode(self, kind: str, raw: bytes) -> Message:
        raise NotImplementedError

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as messages."""
        return len(self._buf)

    def take_buffered(self) -> bytes:
        """Remove and return the bytes received but not yet returned as messages."""
        data = bytes(self._buf)
        self._buf.clear()
        return data


class FrontendParser(_Parser):
    """Messages a client sends. Starts in the startup phase (untyped packets)."""

    def __init__(self, max_message: int = MAX_MESSAGE, max_startup: int = MAX_STARTUP) -> None:
        super().__init__(max_message)
        self._max_startup = max_startup
        self.in_startup = True

    def next_message(self) -> Message | None:
        if self.in_startup:
            return self._next_startup()
        return super().next_message()

    def _next_startup(self) -> Message | None:
        buf = self._buf
        if len(buf) < 4:
            return None
        (length,) = struct.unpack_from("!i", buf, 0)
        if length < 8 or length > self._max_startup:
            raise ProtocolError(f"startup packet length {length} outside 8..{self._max_startup}")
        if len(buf) < length:
            return None
        raw = bytes(buf[:length])
        del buf[:length]
        message = _decode_startup(raw)
        if isinstance(message, StartupMessage):
            self.in_startup = False
        return message

    def _decode(self, kind: str, raw: bytes) -> Message:
        return decode_frontend(raw)


class BackendParser(_Parser):
    """Messages a server sends (after the one-byte answer to an SSLRequest, if any)."""

    def _decode(self, kind: str, raw: bytes) -> Message:
        return decode_backend(raw)


class Framer:
    """Splits a stream into whole typed messages *without decoding them*.

    The fast path of a relay that passes most messages through untouched: :meth:`split` returns
    the buffer and the ``(type, start, end)`` of each whole message in it, so the caller forwards
    unchanged runs of bytes as they came and decodes only the messages it needs
    (:func:`decode_backend`). Checks framing only: a type byte outside ``types`` or a length
    outside ``4..max_message`` raises :class:`ProtocolError`. (The loop itself is
    :func:`~.rowpath.split`: compiled when built.)
    """

    __slots__ = ("_max", "_need", "_tail", "_types")

    def __init__(self, types: bytes, max_message: int = MAX_MESSAGE, pending: bytes = b"") -> None:
        self._types = type_table(types)
        self._max = max_message
        self._tail = bytearray(pending)
        self._need = 0  # size of the buffer that completes the held message (0: unknown)

    def split(self, data: bytes) -> tuple[bytes, list[Frame]]:
        """Add ``data``; return the buffer and the whole messages in it (the rest is held)."""
        tail = self._tail
        if tail:
            if self._need and len(tail) + len(data) < self._need:
                tail += data  # a big message still arriving: no copy of the whole each time
                return b"", []
            buf = bytes(tail) + data
            tail.clear()
        else:
            buf = data
        frames, pos = split_frames(buf, self._types, self._max)
        if pos < len(buf):
            tail += buf[pos:]
            self._need = int.from_bytes(tail[1:5], "big") + 1 if len(tail) >= 5 else 0
        return buf, frames


BACKEND_TYPES = b"RKSZTDCENGHWdcIvA123nstV"
"""Every message type a server sends."""
FRONTEND_TYPES = b"QPBDECSHXdcfpF"
"""Every message type a client sends after the startup phase."""
