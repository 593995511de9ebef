"""PostgreSQL v3 wire protocol: decoding one whole message into its event (sans-I/O).

Every overrun, unknown type or trailing byte raises :class:`~.messages.ProtocolError`."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from airlock.gateway.postgres.messages import (
    _CANCEL_CODE,
    _GSSENC_CODE,
    _SSL_CODE,
    Authentication,
    BackendKeyData,
    Bind,
    CancelRequest,
    Close,
    CommandComplete,
    CopyData,
    CopyDone,
    CopyFail,
    CopyResponse,
    DataRow,
    Describe,
    EmptyQueryResponse,
    ErrorResponse,
    Execute,
    Field,
    Flush,
    FunctionCall,
    GSSENCRequest,
    Message,
    NegotiateProtocolVersion,
    NoticeResponse,
    ParameterStatus,
    Parse,
    PasswordMessage,
    ProtocolError,
    Query,
    ReadyForQuery,
    RowDescription,
    Simple,
    SSLRequest,
    StartupMessage,
    Sync,
    Terminate,
)

__all__ = [
    "decode_backend",
    "decode_frontend",
]


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


def decode_frontend(raw: bytes) -> Message:
    """Decode one whole frontend message (as :class:`Framer` delimits it)."""
    direct = _FRONTEND_DIRECT.get(raw[0]) if raw else None
    if direct is not None:
        return direct(raw)  # type: ignore[no-any-return]
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


# The extended protocol's per-statement messages (Bind, Describe, Execute; Close with them),
# decoded straight from the message bytes: no reader object and no copy of the body (a relay
# decodes three of them per statement). Same events and the same errors, in the same order, as
# the reader-based decoders in _FRONTEND, which a property test holds them to.
_INT16 = struct.Struct("!h")
_INT32 = struct.Struct("!i")


def _cstring_at(raw: bytes, pos: int, what: str) -> tuple[str, int]:
    end = raw.find(b"\0", pos)
    if end < 0:
        raise ProtocolError(f"{what} message has an unterminated string")
    return raw[pos:end].decode("utf-8", "replace"), end + 1


def _int16_at(raw: bytes, pos: int, what: str, *, count: bool = True) -> int:
    if pos + 2 > len(raw):
        raise ProtocolError(f"{what} message is truncated")
    value: int = _INT16.unpack_from(raw, pos)[0]
    if count and value < 0:
        raise ProtocolError(f"{what} message has a negative count")
    return value


def _int16s_at(raw: bytes, pos: int, count: int, what: str) -> tuple[int, ...]:
    if pos + 2 * count > len(raw):
        raise ProtocolError(f"{what} message is truncated")
    return struct.unpack_from(f"!{count}h", raw, pos)


def _ended(raw: bytes, pos: int, what: str) -> None:
    if pos != len(raw):
        raise ProtocolError(f"{what} message has trailing bytes")


def _direct_bind(raw: bytes) -> Bind:
    portal, pos = _cstring_at(raw, 5, "B")
    statement, pos = _cstring_at(raw, pos, "B")
    count = _int16_at(raw, pos, "B")
    formats = _int16s_at(raw, pos + 2, count, "B")
    pos += 2 + 2 * count
    count = _int16_at(raw, pos, "B")
    pos += 2
    params: list[bytes | None] = []
    size_of, total = _INT32.unpack_from, len(raw)
    for _ in range(count):
        if pos + 4 > total:
            raise ProtocolError("B message is truncated")
        size = size_of(raw, pos)[0]
        pos += 4
        if size == -1:
            params.append(None)
            continue
        if size < 0:
            raise ProtocolError("B message has a negative length")
        if pos + size > total:
            raise ProtocolError("B message is truncated")
        params.append(raw[pos : pos + size])
        pos += size
    count = _int16_at(raw, pos, "B")
    results = _int16s_at(raw, pos + 2, count, "B")
    _ended(raw, pos + 2 + 2 * count, "B")
    return Bind(raw, portal, statement, formats, tuple(params), results)


def _direct_execute(raw: bytes) -> Execute:
    portal, pos = _cstring_at(raw, 5, "E")
    if pos + 4 > len(raw):
        raise ProtocolError("E message is truncated")
    _ended(raw, pos + 4, "E")
    return Execute(raw, portal, _INT32.unpack_from(raw, pos)[0])


def _direct_target(cls: Any, what: str) -> Any:
    def decode(raw: bytes) -> Any:
        if len(raw) < 6:
            raise ProtocolError(f"{what} message is truncated")
        target = chr(raw[5])
        if target not in ("S", "P"):
            raise ProtocolError(f"{cls.__name__} target must be S or P")
        name, pos = _cstring_at(raw, 6, what)
        _ended(raw, pos, what)
        return cls(raw, target, name)

    return decode


_FRONTEND_DIRECT: dict[int, Any] = {
    ord("B"): _direct_bind,
    ord("E"): _direct_execute,
    ord("D"): _direct_target(Describe, "D"),
    ord("C"): _direct_target(Close, "C"),
}
