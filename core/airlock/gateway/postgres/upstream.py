"""The upstream side of a PostgreSQL gateway connection: connect (TLS as configured), start up
with the client's harmless parameters, and log in with the held credential (SCRAM-SHA-256 with
the server's signature checked, md5, cleartext, trust). Errors end the client's connection with
a :class:`~._shared.Refused` that says what to check, never the credential."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

from airlock.gateway.postgres._shared import (
    CONNECT_TIMEOUT,
    READ_SIZE,
    Refused,
    Shared,
    fatal,
    md5_password,
    read_one,
)
from airlock.gateway.postgres.encode import (
    encode_auth,
    encode_password,
    encode_ssl_request,
    encode_startup,
)
from airlock.gateway.postgres.framing import BackendParser
from airlock.gateway.postgres.messages import (
    Authentication,
    BackendKeyData,
    ErrorResponse,
    ParameterStatus,
    ReadyForQuery,
    StartupMessage,
)
from airlock.gateway.postgres.parse_state import PARSE_STATE_RULE, unsafe_encoding
from airlock.gateway.postgres.scram import MECHANISM, ScramClient

if TYPE_CHECKING:
    from airlock.gateway.postgres.relay import Relay

__all__ = ["PASSED_PARAMS", "connect", "login"]

# Client startup parameters passed upstream; others (options, replication, ...) are dropped:
# `options=-c session_replication_role=replica` would, for example, switch off triggers.
PASSED_PARAMS = (
    "application_name",
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
    "extra_float_digits",
)


async def connect(
    s: Shared, startup: StartupMessage
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An upstream connection (TLS as configured) that has been sent the startup message."""
    _check_startup_encoding(s, startup)  # before connecting: nothing to clean up then
    upstream = s.config.upstream
    opened: asyncio.StreamWriter | None = None
    try:
        # asyncio.timeout, not wait_for: a wait_for cancelled as the connection completed lost
        # the connection, open (the gateway closing at the session's end cancels connects).
        async with asyncio.timeout(CONNECT_TIMEOUT):
            up_r, up_w = await asyncio.open_connection(
                upstream.host, upstream.port, limit=READ_SIZE
            )
        opened = up_w
        await _tls(s, up_r, up_w)
    except BaseException as exc:
        if opened is not None:
            opened.close()
        if not isinstance(exc, OSError | TimeoutError | ssl.SSLError):
            raise
        raise Refused(
            fatal(
                "08006",
                f"the Airlock gateway {s.config.name} cannot reach its upstream database",
                hint="check the gateway's upstream host, port and tls settings and that the "
                "database is up",
            ),
            f"upstream unreachable: {type(exc).__name__}",
        ) from None
    params = {"user": s.login.user, "database": upstream.database}
    params.update({k: v for k, v in startup.params.items() if k in PASSED_PARAMS})
    up_w.write(encode_startup(params))
    return up_r, up_w


async def login(
    s: Shared,
    up_r: asyncio.StreamReader,
    up_w: asyncio.StreamWriter,
    our_key: Callable[[BackendKeyData], bytes],
    relay: Relay,
) -> tuple[BackendParser, bytes]:
    """Answer upstream's authentication; returns the parser (it may hold bytes already) and the
    greeting for the client (AuthenticationOk, parameters, our cancel key, ReadyForQuery)."""
    parser = BackendParser()
    scram: ScramClient | None = None
    greeting = bytearray(encode_auth(0))
    while True:
        message = await read_one(up_r, parser)
        if isinstance(message, Authentication):
            scram = _answer_auth(s, up_w, message, scram)
            await up_w.drain()
        elif isinstance(message, ErrorResponse):
            error = relay.results.masked_error(message)
            raise Refused(error, "upstream refused the login")
        elif isinstance(message, BackendKeyData):
            greeting += our_key(message)
        elif isinstance(message, ReadyForQuery):
            greeting += message.raw
            return parser, bytes(greeting)
        else:
            if isinstance(message, ParameterStatus):
                relay.state.update(message.name, message.value)
            greeting += message.raw


def _check_startup_encoding(s: Shared, startup: StartupMessage) -> None:
    encoding = startup.params.get("client_encoding", "")
    if unsafe_encoding(encoding):
        raise Refused(
            fatal(
                "22023",
                f"the Airlock gateway {s.config.name} does not accept client_encoding "
                f"{encoding[:40]}: the gateway would read SQL differently from the server "
                f"(rule {PARSE_STATE_RULE})",
                hint="connect with client_encoding UTF8 (PGCLIENTENCODING=UTF8)",
            ),
            f"client asked for client_encoding {encoding[:40]} ({PARSE_STATE_RULE})",
        )


async def _tls(s: Shared, up_r: asyncio.StreamReader, up_w: asyncio.StreamWriter) -> None:
    tls = s.config.upstream.tls
    if tls == "disable":
        return
    up_w.write(encode_ssl_request())
    await up_w.drain()
    answer = await up_r.readexactly(1)
    if answer == b"S":
        sni = s.config.upstream.host if tls == "verify-full" else None
        await up_w.start_tls(_tls_context(s), server_hostname=sni)
    elif answer != b"N" or tls != "prefer":
        raise ssl.SSLError(f"upstream refused TLS (tls: {tls})")


def _tls_context(s: Shared) -> ssl.SSLContext:
    upstream = s.config.upstream
    if upstream.tls == "verify-full":
        return ssl.create_default_context(cafile=upstream.ca_file)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # prefer/require: encrypted, not authenticated
    return context


def _answer_auth(
    s: Shared, up_w: asyncio.StreamWriter, message: Authentication, scram: ScramClient | None
) -> ScramClient | None:
    login = s.login
    if message.code == 0:
        return scram
    if message.code == 3 and login.password is not None:
        up_w.write(encode_password(login.password.encode() + b"\0"))
    elif message.code == 5 and login.password is not None:
        up_w.write(encode_password(md5_password(login, message.data[:4])))
    elif message.code == 10 and login.password is not None:
        if MECHANISM.encode() not in message.data.split(b"\0"):
            raise _login_error(s, "upstream offers no SCRAM-SHA-256")
        scram = ScramClient(login.password)
        up_w.write(encode_password(scram.first()))
    elif message.code == 11 and scram is not None:
        up_w.write(encode_password(scram.final(message.data)))
    elif message.code == 12 and scram is not None:
        scram.verify(message.data)
    else:
        raise _login_error(s, f"unsupported upstream authentication (code {message.code})")
    return scram


def _login_error(s: Shared, what: str) -> Refused:
    return Refused(
        fatal(
            "28000",
            f"the Airlock gateway {s.config.name} cannot log in upstream",
            hint="the held credential or the upstream's authentication method does not fit; "
            "see the session log",
        ),
        what,
    )
