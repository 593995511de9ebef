"""PostgreSQL v3 wire protocol, sans-I/O: bytes in, frozen message events out, and encoders.

    parser = FrontendParser()            # what a client sends (starts with a startup packet)
    parser.feed(data)
    for message in parser:               # Query, Parse, Bind, ..., or StartupMessage first
        ...

:class:`BackendParser` does the same for what a server sends. Every message keeps its exact
bytes in ``raw`` so a proxy forwards what it does not change byte for byte. Anything malformed
raises :class:`ProtocolError` (and only that): unknown type bytes, lengths out of range, fields
that do not fit their message, messages over the size caps.

A relay that passes most messages through unchanged uses :class:`Framer` instead: it only
delimits messages (type byte, length), and the relay decodes the few it needs with
:func:`decode_frontend` / :func:`decode_backend` and forwards the rest as the bytes came.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from airlock.errors import AirlockError, ExitCode

__all__ = [
    "BACKEND_TYPES",
    "FRONTEND_TYPES",
    "MAX_MESSAGE",
    "MAX_STARTUP",
    "PROTOCOL_V3",
    "Authentication",
    "BackendKeyData",
    "BackendParser",
    "Bind",
    "CancelRequest",
    "Close",
    "CommandComplete",
    "CopyData",
    "CopyDone",
    "CopyFail",
    "CopyResponse",
    "DataRow",
    "Describe",
    "EmptyQueryResponse",
    "ErrorResponse",
    "Execute",
    "Field",
    "Flush",
    "Frame",
    "Framer",
    "FrontendParser",
    "FunctionCall",
    "GSSENCRequest",
    "Message",
    "NegotiateProtocolVersion",
    "NoticeResponse",
    "ParameterStatus",
    "Parse",
    "PasswordMessage",
    "ProtocolError",
    "Query",
    "ReadyForQuery",
    "RowDescription",
    "SSLRequest",
    "Simple",
    "StartupMessage",
    "Sync",
    "Terminate",
    "decode_backend",
    "decode_frontend",
    "encode_auth",
    "encode_backend_key",
    "encode_cancel",
    "encode_data_row",
    "encode_error",
    "encode_message",
    "encode_negotiate",
    "encode_parse",
    "encode_password",
    "encode_query",
    "encode_ready",
    "encode_ssl_request",
    "encode_startup",
]

MAX_MESSAGE = 64 * 1024 * 1024
MAX_STARTUP = 10 * 1024
PROTOCOL_V3 = 3 << 16
_SSL_CODE = 80877103
_GSSENC_CODE = 80877104
_CANCEL_CODE = 80877102


class ProtocolError(AirlockError):
    """Bytes that are not valid PostgreSQL protocol (or exceed a size cap)."""

    exit_code = ExitCode.UNAVAILABLE
    default_hint = "the peer does not speak the PostgreSQL v3 protocol correctly"


@dataclass(frozen=True)
class Message:
    """Base of every event; ``raw`` is the message's exact bytes on the wire."""

    raw: bytes = field(repr=False, compare=False)


# ------------------------------------------------------------------------- startup phase


@dataclass(frozen=True)
class StartupMessage(Message):
    version: int
    params: Mapping[str, str]


@dataclass(frozen=True)
class SSLRequest(Message):
    pass


@dataclass(frozen=True)
class GSSENCRequest(Message):
    pass


@dataclass(frozen=True)
class CancelRequest(Message):
    pid: int
    key: bytes = field(repr=False)


# ------------------------------------------------------------------------------ frontend


@dataclass(frozen=True)
class Query(Message):
    sql: str


@dataclass(frozen=True)
class Parse(Message):
    name: str
    sql: str
    param_types: tuple[int, ...]


@dataclass(frozen=True)
class Bind(Message):
    portal: str
    statement: str
    param_formats: tuple[int, ...]
    params: tuple[bytes | None, ...] = field(repr=False)
    result_formats: tuple[int, ...]


@dataclass(frozen=True)
class Describe(Message):
    target: str  # "S" statement | "P" portal
    name: str


@dataclass(frozen=True)
class Execute(Message):
    portal: str
    max_rows: int


@dataclass(frozen=True)
class Close(Message):
    target: str
    name: str


@dataclass(frozen=True)
class Sync(Message):
    pass


@dataclass(frozen=True)
class Flush(Message):
    pass


@dataclass(frozen=True)
class Terminate(Message):
    pass


@dataclass(frozen=True)
class CopyData(Message):
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class CopyDone(Message):
    pass


@dataclass(frozen=True)
class CopyFail(Message):
    reason: str


@dataclass(frozen=True)
class PasswordMessage(Message):
    """Type ``p``: password, SASLInitialResponse or SASLResponse (context decides)."""

    data: bytes = field(repr=False)


@dataclass(frozen=True)
class FunctionCall(Message):
    function_oid: int


# ------------------------------------------------------------------------------- backend


@dataclass(frozen=True)
class Authentication(Message):
    code: int  # 0 ok, 3 cleartext, 5 md5, 10 SASL, 11 SASL continue, 12 SASL final, ...
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class BackendKeyData(Message):
    pid: int
    key: bytes = field(repr=False)


@dataclass(frozen=True)
class ParameterStatus(Message):
    name: str
    value: str


@dataclass(frozen=True)
class ReadyForQuery(Message):
    status: str  # I idle, T in transaction, E failed transaction


@dataclass(frozen=True)
class Field:
    """One column of a RowDescription."""

    name: str
    table_oid: int
    column: int
    type_oid: int
    type_size: int
    type_mod: int
    format: int


@dataclass(frozen=True)
class RowDescription(Message):
    fields: tuple[Field, ...]


@dataclass(frozen=True)
class DataRow(Message):
    values: tuple[bytes | None, ...] = field(repr=False)


@dataclass(frozen=True)
class CommandComplete(Message):
    tag: str


@dataclass(frozen=True)
class ErrorResponse(Message):
    fields: Mapping[str, str]

    @property
    def sqlstate(self) -> str:
        return self.fields.get("C", "")

    @property
    def message(self) -> str:
        return self.fields.get("M", "")


@dataclass(frozen=True)
class NoticeResponse(Message):
    fields: Mapping[str, str]


@dataclass(frozen=True)
class CopyResponse(Message):
    direction: str  # G in, H out, W both
    format: int
    column_formats: tuple[int, ...]


@dataclass(frozen=True)
class NegotiateProtocolVersion(Message):
    minor: int
    options: tuple[str, ...]


@dataclass(frozen=True)
class EmptyQueryResponse(Message):
    pass


@dataclass(frozen=True)
class Simple(Message):
    """A backend message passed through without fields of interest (ParseComplete, ...)."""

    type: str


# ------------------------------------------------------------------------------- reading


class _Reader:
    """Field decoder over one message body; every overrun is a ProtocolError."""

    __slots__ = ("body", "pos", "what")

    def __init__(self, body: bytes, what: str) -> None:
        self.body = body
        self.pos = 0
        self.what = what

    def _take(self, size: int) -> bytes:
        end = self.pos + size
        if size < 0 or end > len(self.body):
            raise ProtocolError(f"{self.what} message is truncated")
        chunk = self.body[self.pos : end]
        self.pos = end
        return chunk

    def int16(self) -> int:
        value: int = struct.unpack("!h", self._take(2))[0]
        return value

    def uint16(self) -> int:
        value: int = struct.unpack("!H", self._take(2))[0]
        return value

    def int32(self) -> int:
        value: int = struct.unpack("!i", self._take(4))[0]
        return value

    def uint32(self) -> int:
        value: int = struct.unpack("!I", self._take(4))[0]
        return value

    def cstring(self) -> str:
        end = self.body.find(b"\0", self.pos)
        if end < 0:
            raise ProtocolError(f"{self.what} message has an unterminated string")
        raw = self.body[self.pos : end]
        self.pos = end + 1
        return raw.decode("utf-8", "replace")

    def count(self) -> int:
        value = self.int16()
        if value < 0:
            raise ProtocolError(f"{self.what} message has a negative count")
        return value

    def value(self) -> bytes | None:
        size = self.int32()
        if size == -1:
            return None
        if size < 0:
            raise ProtocolError(f"{self.what} message has a negative length")
        return self._take(size)

    def int16s(self, count: int) -> tuple[int, ...]:
        values: tuple[int, ...] = struct.unpack(f"!{count}h", self._take(2 * count))
        return values

    def rest(self) -> bytes:
        return self._take(len(self.body) - self.pos)

    def end(self) -> None:
        if self.pos != len(self.body):
            raise ProtocolError(f"{self.what} message has trailing bytes")


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


Frame = tuple[int, int, int]
"""A whole message inside a buffer: (type byte, start, end)."""


class Framer:
    """Splits a stream into whole typed messages *without decoding them*.

    The fast path of a relay that passes most messages through untouched: :meth:`split` returns
    the buffer and the ``(type, start, end)`` of each whole message in it, so the caller forwards
    unchanged runs of bytes as they came and decodes only the messages it needs
    (:func:`decode_backend`). Checks framing only: a type byte outside ``types`` or a length
    outside ``4..max_message`` raises :class:`ProtocolError`.
    """

    __slots__ = ("_max", "_need", "_tail", "_types")

    def __init__(self, types: bytes, max_message: int = MAX_MESSAGE, pending: bytes = b"") -> None:
        self._types = frozenset(types)
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
        frames: list[Frame] = []
        pos, size, types, limit = 0, len(buf), self._types, self._max
        while size - pos >= 5:
            kind = buf[pos]
            length = int.from_bytes(buf[pos + 1 : pos + 5], "big", signed=True)
            if kind not in types:
                raise ProtocolError(f"unknown message type {chr(kind)!r}")
            if length < 4 or length > limit:
                raise ProtocolError(
                    f"message {chr(kind)!r} has length {length}, outside 4..{limit}"
                )
            end = pos + 1 + length
            if end > size:
                break
            frames.append((kind, pos, end))
            pos = end
        if pos < size:
            tail += buf[pos:]
            self._need = int.from_bytes(tail[1:5], "big") + 1 if len(tail) >= 5 else 0
        return buf, frames


BACKEND_TYPES = b"RKSZTDCENGHWdcIvA123nstV"
"""Every message type a server sends."""
FRONTEND_TYPES = b"QPBDECSHXdcfpF"
"""Every message type a client sends after the startup phase."""


def decode_frontend(raw: bytes) -> Message:
    """Decode one whole frontend message (as :class:`Framer` delimits it)."""
    return _decode(raw, _FRONTEND, "frontend")


def decode_backend(raw: bytes) -> Message:
    """Decode one whole backend message (as :class:`Framer` delimits it)."""
    return _decode(raw, _BACKEND, "backend")


def _decode(raw: bytes, decoders: Mapping[str, Any], side: str) -> Message:
    kind = chr(raw[0])
    decoder = decoders.get(kind)
    if decoder is None:
        raise ProtocolError(f"unknown {side} message type {kind!r}")
    reader = _Reader(raw[5:], kind)
    message: Message = decoder(raw, reader)
    reader.end()
    return message


def _decode_startup(raw: bytes) -> Message:
    reader = _Reader(raw[4:], "startup")
    code = reader.uint32()
    if code == _SSL_CODE:
        reader.end()
        return SSLRequest(raw)
    if code == _GSSENC_CODE:
        reader.end()
        return GSSENCRequest(raw)
    if code == _CANCEL_CODE:
        pid = reader.uint32()
        key = reader.rest()
        if not 4 <= len(key) <= 256:
            raise ProtocolError("cancel request key has a bad length")
        return CancelRequest(raw, pid, key)
    if code >> 16 != 3:
        raise ProtocolError(f"unsupported protocol version {code >> 16}.{code & 0xFFFF}")
    params: dict[str, str] = {}
    while True:
        name = reader.cstring()
        if not name:
            break
        params[name] = reader.cstring()
    reader.end()
    if "user" not in params:
        raise ProtocolError("startup packet has no user")
    return StartupMessage(raw, code, params)


def _strings(reader: _Reader) -> dict[str, str]:
    fields: dict[str, str] = {}
    while True:
        code = reader._take(1)
        if code == b"\0":
            return fields
        fields[code.decode("latin-1")] = reader.cstring()


def _f_bind(raw: bytes, r: _Reader) -> Bind:
    portal, statement = r.cstring(), r.cstring()
    formats = r.int16s(r.count())
    params = tuple(r.value() for _ in range(r.count()))
    return Bind(raw, portal, statement, formats, params, r.int16s(r.count()))


def _f_target(cls: Any) -> Any:
    def decode(raw: bytes, r: _Reader) -> Any:
        target = r._take(1).decode("latin-1")
        if target not in ("S", "P"):
            raise ProtocolError(f"{cls.__name__} target must be S or P")
        return cls(raw, target, r.cstring())

    return decode


def _f_function_call(raw: bytes, r: _Reader) -> FunctionCall:
    oid = r.uint32()
    r.rest()
    return FunctionCall(raw, oid)


_FRONTEND: dict[str, Any] = {
    "Q": lambda raw, r: Query(raw, r.cstring()),
    "P": lambda raw, r: Parse(
        raw, r.cstring(), r.cstring(), tuple(r.uint32() for _ in range(r.count()))
    ),
    "B": _f_bind,
    "D": _f_target(Describe),
    "E": lambda raw, r: Execute(raw, r.cstring(), r.int32()),
    "C": _f_target(Close),
    "S": lambda raw, r: Sync(raw),
    "H": lambda raw, r: Flush(raw),
    "X": lambda raw, r: Terminate(raw),
    "d": lambda raw, r: CopyData(raw, r.rest()),
    "c": lambda raw, r: CopyDone(raw),
    "f": lambda raw, r: CopyFail(raw, r.cstring()),
    "p": lambda raw, r: PasswordMessage(raw, r.rest()),
    "F": _f_function_call,
}


def _b_row_description(raw: bytes, r: _Reader) -> RowDescription:
    fields = tuple(
        Field(r.cstring(), r.uint32(), r.int16(), r.uint32(), r.int16(), r.int32(), r.int16())
        for _ in range(r.count())
    )
    return RowDescription(raw, fields)


def _b_copy(raw: bytes, r: _Reader) -> CopyResponse:
    fmt = r._take(1)[0]
    formats = tuple(r.int16() for _ in range(r.count()))
    return CopyResponse(raw, chr(raw[0]), fmt, formats)


def _b_negotiate(raw: bytes, r: _Reader) -> NegotiateProtocolVersion:
    minor = r.int32()
    count = r.int32()
    if count < 0:
        raise ProtocolError("negative option count")
    return NegotiateProtocolVersion(raw, minor, tuple(r.cstring() for _ in range(count)))


def _b_notification(raw: bytes, r: _Reader) -> Simple:
    r.int32(), r.cstring(), r.cstring()
    return Simple(raw, "A")


def _simple(kind: str) -> Any:
    return lambda raw, r: Simple(raw, kind)


def _simple_rest(kind: str) -> Any:
    def decode(raw: bytes, r: _Reader) -> Simple:
        r.rest()
        return Simple(raw, kind)

    return decode


_BACKEND: dict[str, Any] = {
    "R": lambda raw, r: Authentication(raw, r.int32(), r.rest()),
    "K": lambda raw, r: BackendKeyData(raw, r.uint32(), r.rest()),
    "S": lambda raw, r: ParameterStatus(raw, r.cstring(), r.cstring()),
    "Z": lambda raw, r: ReadyForQuery(raw, r._take(1).decode("latin-1")),
    "T": _b_row_description,
    "D": lambda raw, r: DataRow(raw, tuple(r.value() for _ in range(r.count()))),
    "C": lambda raw, r: CommandComplete(raw, r.cstring()),
    "E": lambda raw, r: ErrorResponse(raw, _strings(r)),
    "N": lambda raw, r: NoticeResponse(raw, _strings(r)),
    "G": _b_copy,
    "H": _b_copy,
    "W": _b_copy,
    "d": lambda raw, r: CopyData(raw, r.rest()),
    "c": lambda raw, r: CopyDone(raw),
    "I": lambda raw, r: EmptyQueryResponse(raw),
    "v": _b_negotiate,
    "A": _b_notification,
    "1": _simple("1"),
    "2": _simple("2"),
    "3": _simple("3"),
    "n": _simple("n"),
    "s": _simple("s"),
    "t": _simple_rest("t"),
    "V": _simple_rest("V"),
}


# ------------------------------------------------------------------------------ encoding


def encode_message(kind: bytes, body: bytes = b"") -> bytes:
    """One typed message: ``kind`` (1 byte) + length + ``body``."""
    return kind + struct.pack("!i", len(body) + 4) + body


def encode_startup(params: Mapping[str, str], version: int = PROTOCOL_V3) -> bytes:
    """A StartupMessage with ``params`` (user, database, ...)."""
    body = struct.pack("!i", version)
    for name, value in params.items():
        body += name.encode() + b"\0" + value.encode() + b"\0"
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + body


def encode_ssl_request() -> bytes:
    """The 8-byte SSLRequest packet."""
    return struct.pack("!ii", 8, _SSL_CODE)


def encode_cancel(pid: int, key: bytes) -> bytes:
    """A CancelRequest packet for backend ``pid`` with secret ``key``."""
    return struct.pack("!iI", 12 + len(key), _CANCEL_CODE) + struct.pack("!I", pid) + key


def encode_error(
    sqlstate: str,
    message: str,
    *,
    severity: str = "ERROR",
    hint: str | None = None,
    detail: str | None = None,
    notice: bool = False,
) -> bytes:
    """An ErrorResponse (or NoticeResponse) with the usual fields."""
    fields = [("S", severity), ("V", severity), ("C", sqlstate), ("M", message)]
    if detail:
        fields.append(("D", detail))
    if hint:
        fields.append(("H", hint))
    body = b"".join(k.encode() + v.encode("utf-8", "replace") + b"\0" for k, v in fields) + b"\0"
    return encode_message(b"N" if notice else b"E", body)


def encode_data_row(values: tuple[bytes | None, ...] | list[bytes | None]) -> bytes:
    """A DataRow with ``values`` (None is SQL NULL)."""
    parts = [struct.pack("!h", len(values))]
    for value in values:
        if value is None:
            parts.append(b"\xff\xff\xff\xff")
        else:
            parts.append(struct.pack("!i", len(value)))
            parts.append(value)
    return encode_message(b"D", b"".join(parts))


def encode_auth(code: int, data: bytes = b"") -> bytes:
    """An Authentication message (0 ok, 3 cleartext password request, ...)."""
    return encode_message(b"R", struct.pack("!i", code) + data)


def encode_ready(status: str) -> bytes:
    """ReadyForQuery with transaction ``status`` (I, T or E)."""
    return encode_message(b"Z", status.encode("latin-1"))


def encode_backend_key(pid: int, key: bytes) -> bytes:
    """BackendKeyData."""
    return encode_message(b"K", struct.pack("!I", pid) + key)


def encode_query(sql: str) -> bytes:
    """A simple-protocol Query."""
    return encode_message(b"Q", sql.encode("utf-8") + b"\0")


def encode_password(data: bytes) -> bytes:
    """A PasswordMessage / SASL response (type ``p``) carrying ``data`` as is."""
    return encode_message(b"p", data)


def encode_negotiate(minor: int, options: tuple[str, ...] = ()) -> bytes:
    """NegotiateProtocolVersion: the newest minor version and the options not understood."""
    body = struct.pack("!ii", minor, len(options))
    body += b"".join(o.encode() + b"\0" for o in options)
    return encode_message(b"v", body)


def encode_parse(name: str, sql: str, param_types: tuple[int, ...] = ()) -> bytes:
    """A Parse message."""
    body = name.encode() + b"\0" + sql.encode("utf-8") + b"\0"
    body += struct.pack("!h", len(param_types)) + b"".join(
        struct.pack("!I", t) for t in param_types
    )
    return encode_message(b"P", body)
