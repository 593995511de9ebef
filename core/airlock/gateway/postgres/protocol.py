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

This module gathers the protocol's parts: :mod:`.messages` (events, caps, errors),
:mod:`.decode`, :mod:`.framing` and :mod:`.encode`.
"""

from __future__ import annotations

from airlock.gateway.postgres.decode import decode_backend, decode_frontend
from airlock.gateway.postgres.encode import (
    encode_auth,
    encode_backend_key,
    encode_cancel,
    encode_data_row,
    encode_error,
    encode_message,
    encode_negotiate,
    encode_parse,
    encode_password,
    encode_query,
    encode_ready,
    encode_ssl_request,
    encode_startup,
)
from airlock.gateway.postgres.framing import (
    BACKEND_TYPES,
    FRONTEND_TYPES,
    BackendParser,
    Frame,
    Framer,
    FrontendParser,
)
from airlock.gateway.postgres.messages import (
    MAX_MESSAGE,
    MAX_STARTUP,
    PROTOCOL_V3,
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
