"""PostgreSQL v3 wire protocol: encoders for the messages the gateway writes itself."""

from __future__ import annotations

import struct
from collections.abc import Mapping

from airlock.gateway.postgres.messages import _CANCEL_CODE, _SSL_CODE, PROTOCOL_V3

__all__ = [
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
