"""The PostgreSQL gateway: an asyncio server that relays between an agent and the real database.

Per client connection: startup (SSLRequest answered ``N``: the client is on loopback), ticket
check (the client's *password* must be the session ticket), upstream login with the held
credential (TLS per policy; SCRAM-SHA-256, md5, cleartext or trust), then relay. Every statement
is judged by the guardrails and recorded; result columns and values are masked on the way back.

A refused statement is not dropped but *replaced* by a statement that fails upstream at once
(``SELECT "airlock_refused_<nonce>_<n>"``); its error is swapped for ours (SQLSTATE 42501, the
rule id, a hint) on the way back. So responses stay in order in pipelines, the extended protocol
skips to the next Sync as PostgreSQL would, and an open transaction is aborted exactly as a real
error would abort it. The connection stays usable.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from airlock.gateway.postgres._shared import (
    READ_SIZE,
    STARTUP_TIMEOUT,
    Approve,
    Record,
    Shared,
    UpstreamLogin,
    resolve_login,
)
from airlock.gateway.postgres.connection import Connection
from airlock.gateway.postgres.guard import SqlGuard
from airlock.gateway.postgres.masking import ColumnMasker
from airlock.gateway.tickets import TicketCheck
from airlock.mask import Masker
from airlock.policy.gateways import PostgresGatewayConfig
from airlock.policy.guardrails import GuardrailDefaults, GuardrailRule

__all__ = [
    "Approve",
    "PostgresGateway",
    "Record",
    "ThreadedGateway",
    "UpstreamLogin",
    "resolve_login",
    "serve_postgres",
    "start_in_thread",
]

_ACCEPT_TURNS = 8  # loop turns from an accepted socket to its handler's first step, and then some


class PostgresGateway:
    """A running gateway. ``address`` is where it listens; ``close()`` stops it."""

    def __init__(self, server: asyncio.Server, shared: Shared) -> None:
        self._server = server
        self._shared = shared
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        sock = server.sockets[0].getsockname()
        self.address: tuple[str, int] = (sock[0], sock[1])

    @property
    def name(self) -> str:
        """The gateway's name in the policy."""
        return self._shared.config.name

    async def close(self) -> None:
        """Stop listening and end every open connection."""
        self._closing = True
        self._server.close()
        # A connection joins ``_tasks`` when its handler first runs: one accepted just before
        # the close may not have yet (its transport was then never closed). Accept, transport,
        # protocol and handler task take a few loop turns: let them run (a handler that starts
        # now closes its connection at once), then cancel until none is left.
        for _ in range(_ACCEPT_TURNS):
            await asyncio.sleep(0)
        while self._tasks:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await asyncio.sleep(0)
        self._shared.close_io()
        await self._server.wait_closed()

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self._closing:
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await Connection(self._shared, reader, writer).run()
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def serve_postgres(
    config: PostgresGatewayConfig,
    *,
    masker: Masker,
    record: Record,
    approve: Approve,
    ticket: TicketCheck,
    guardrails: Sequence[GuardrailRule] = (),
    defaults: GuardrailDefaults | None = None,
    login: UpstreamLogin | None = None,
    environ: Mapping[str, str] | None = None,
    startup_timeout: float = STARTUP_TIMEOUT,
) -> PostgresGateway:
    """Start the gateway ``config`` describes and return it once it listens.

    ``login`` defaults to the credential the policy names, read from ``environ`` (default: this
    process's environment). ``record`` receives every event; ``approve`` is asked for every
    statement a ``require_approval`` rule holds (an exception counts as a denial).
    """
    shared = Shared(
        config=config,
        login=login or resolve_login(config, os.environ if environ is None else environ),
        masker=masker,
        record=record,
        approve=approve,
        ticket=ticket,
        guard=SqlGuard(guardrails, defaults or GuardrailDefaults(), config.name),
        columns=ColumnMasker(config.mask_columns),
        startup_timeout=startup_timeout,
    )
    holder: list[PostgresGateway] = []

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Closing the gateway cancels the connections still open; asyncio's stream protocol
        # would log that as an error with a traceback on the user's terminal. Their last events
        # are recorded by then and the sockets closed by _serve_client.
        with contextlib.suppress(asyncio.CancelledError):
            await holder[0]._serve_client(reader, writer)

    server = await asyncio.start_server(
        on_client, config.listen_host, config.listen_port, limit=READ_SIZE
    )
    holder.append(PostgresGateway(server, shared))
    return holder[0]


class ThreadedGateway:
    """A gateway running in its own thread and event loop (see :func:`start_in_thread`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, gateway: PostgresGateway) -> None:
        self._loop = loop
        self.gateway = gateway
        self.address = gateway.address
        self._closing = False

    def close(self, timeout: float = 10.0) -> None:
        """Stop the gateway and its thread (once: closing again does nothing)."""
        if self._closing or self._loop.is_closed():
            return
        self._closing = True
        future = asyncio.run_coroutine_threadsafe(self.gateway.close(), self._loop)
        with contextlib.suppress(Exception):
            future.result(timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)


def start_in_thread(config: PostgresGatewayConfig, **kwargs: Any) -> ThreadedGateway:
    """Run :func:`serve_postgres` in a daemon thread with its own loop; returns once listening.

    Keyword arguments are those of :func:`serve_postgres`. ``record`` is called from that thread.
    """
    loop = asyncio.new_event_loop()
    ready: list[PostgresGateway | BaseException] = []
    started = threading.Event()

    def main() -> None:
        asyncio.set_event_loop(loop)
        try:
            ready.append(loop.run_until_complete(serve_postgres(config, **kwargs)))
        except BaseException as exc:  # handed to the caller below
            ready.append(exc)
            started.set()
            loop.close()
            return
        started.set()
        loop.run_forever()
        loop.close()

    threading.Thread(target=main, name=f"airlock-pg-{config.name}", daemon=True).start()
    started.wait()
    result = ready[0]
    if isinstance(result, BaseException):
        raise result
    return ThreadedGateway(loop, result)
