"""PostgreSQL v3 wire protocol, sans-I/O: the message events (frozen dataclasses, each keeping
its exact bytes in ``raw``), the size caps, and :class:`ProtocolError`.

    parser = FrontendParser()            # framing: what a client sends (startup packet first)
    parser.feed(data)
    for message in parser:               # Query, Parse, Bind, ..., or StartupMessage first
        ...

:class:`~.framing.BackendParser` does the same for what a server sends. Anything malformed
raises :class:`ProtocolError` (and only that): unknown type bytes, lengths out of range, fields
that do not fit their message, messages over the size caps. A relay that passes most messages
through unchanged uses :class:`~.framing.Framer` instead: it only delimits messages, and the
relay decodes the few it needs with :mod:`.decode` and forwards the rest as the bytes came.
Encoders are in :mod:`.encode`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from airlock.errors import AirlockError, ExitCode

__all__ = [
    "MAX_MESSAGE",
    "MAX_STARTUP",
    "PROTOCOL_V3",
    "Authentication",
    "BackendKeyData",
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
