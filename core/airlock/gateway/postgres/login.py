"""The client's side of a PostgreSQL gateway connection before the relay: the startup packet
(SSLRequest answered ``N``: the client is on loopback; a CancelRequest forwarded upstream when
its key is one of ours), then the password, which must be the session ticket."""

from __future__ import annotations

import asyncio
import contextlib

from airlock.gateway.postgres._shared import CONNECT_TIMEOUT, Refused, Shared, fatal, read_one
from airlock.gateway.postgres.encode import encode_auth, encode_cancel, encode_negotiate
from airlock.gateway.postgres.framing import FrontendParser
from airlock.gateway.postgres.messages import (
    MAX_STARTUP,
    CancelRequest,
    GSSENCRequest,
    PasswordMessage,
    ProtocolError,
    SSLRequest,
    StartupMessage,
)
from airlock.gateway.tickets import check_ticket

__all__ = ["authenticate_client", "read_startup"]


async def read_startup(
    shared: Shared, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> StartupMessage | None:
    """The client's StartupMessage; None when it went away or only sent a CancelRequest."""
    parser = FrontendParser()
    while True:
        message = parser.next_message()
        if message is None:
            data = await reader.read(MAX_STARTUP)
            if not data:
                return None
            parser.feed(data)
            continue
        if isinstance(message, SSLRequest | GSSENCRequest):
            if parser.buffered:  # bytes after SSLRequest before our answer: injection
                raise ProtocolError("data received before the SSL answer")
            writer.write(b"N")  # loopback: no TLS between agent and gateway
            await writer.drain()
        elif isinstance(message, CancelRequest):
            await _forward_cancel(shared, message)
            return None
        else:
            assert isinstance(message, StartupMessage)
            if parser.buffered:
                raise ProtocolError("data received before authentication")
            return message


async def _forward_cancel(shared: Shared, request: CancelRequest) -> None:
    target = shared.cancel_keys.get((request.pid, request.key))
    if target is None:
        return  # PostgreSQL says nothing either way
    server = shared.config.upstream
    with contextlib.suppress(OSError, TimeoutError):
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(server.host, server.port), CONNECT_TIMEOUT
        )
        writer.write(encode_cancel(*target))
        await writer.drain()
        writer.close()


async def authenticate_client(
    shared: Shared,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    startup: StartupMessage,
) -> tuple[bytes, bytes]:
    """Ask for the password and check it is the ticket: (the ticket presented, what the client
    pipelined behind its password, relayed later). Refused when it is not."""
    if startup.version & 0xFFFF:
        options = tuple(k for k in startup.params if k.startswith("_pq_."))
        writer.write(encode_negotiate(0, options))
    writer.write(encode_auth(3))  # cleartext: loopback, and it is only a ticket
    await writer.drain()
    parser = FrontendParser()
    parser.in_startup = False
    message = await read_one(reader, parser)
    if not isinstance(message, PasswordMessage):
        raise ProtocolError("expected a password message")
    after_password = parser.take_buffered()
    presented = message.data.rstrip(b"\0")
    if not await check_ticket(shared.ticket, presented):
        raise Refused(
            fatal(
                "28P01",
                f"password authentication failed for the Airlock gateway {shared.config.name}",
                hint="use the session ticket Airlock gave you as the password "
                "(PGPASSWORD / DATABASE_URL), not a database password",
            ),
            "client presented a wrong ticket",
        )
    return presented, after_password
