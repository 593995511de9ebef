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
import hashlib
import inspect
import os
import secrets
import ssl
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from airlock.errors import ConfigError
from airlock.events import EventType
from airlock.gate.interface import Operation
from airlock.gateway.postgres import protocol as pg
from airlock.gateway.postgres.guard import SqlGuard, Verdict
from airlock.gateway.postgres.masking import ColumnMasker, ColumnPlan
from airlock.gateway.postgres.scram import MECHANISM, ScramClient
from airlock.gateway.tickets import TicketCheck
from airlock.mask import Masker
from airlock.policy.gateways import PostgresGatewayConfig
from airlock.policy.guardrails import Action, Decision, GuardrailDefaults, GuardrailRule

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

Record = Callable[[str, Mapping[str, Any]], object]
Approve = Callable[[Operation], Awaitable[bool] | bool]

STARTUP_TIMEOUT = 10.0
CONNECT_TIMEOUT = 10.0
_READ = 256 * 1024
# Client startup parameters passed upstream; others (options, replication, ...) are dropped:
# `options=-c session_replication_role=replica` would, for example, switch off triggers.
_PASSED_PARAMS = (
    "application_name",
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
    "extra_float_digits",
)
_COMPONENT = "gateway.postgres"
_DATA_ROW, _ROW_DESCRIPTION, _COMMAND_COMPLETE, _READY, _COPY_DATA = b"DTCZd"
_QUERY, _TERMINATE, _SYNC = b"QXS"
# Frontend messages with nothing to judge or record: Describe, Flush, CopyData/Done/Fail.
_CLIENT_PASSED = frozenset(b"DHdcf")
_MAX_ROW_PLANS = 4096
# Backend messages the relay passes on without looking inside (the rest it decodes).
_PASSED = frozenset(b"123nStKAVcGHWvR")


@dataclass(frozen=True)
class UpstreamLogin:
    """The held credential: user name and password (never shown)."""

    user: str
    password: str | None = field(default=None, repr=False)


def resolve_login(config: PostgresGatewayConfig, environ: Mapping[str, str]) -> UpstreamLogin:
    """The upstream login the policy names, read from ``environ``; ConfigError if missing."""
    cred = config.credential
    if cred.env is not None:
        return UpstreamLogin(
            _env(environ, cred.env.user, config.name), _env(environ, cred.env.password, config.name)
        )
    if cred.user is not None:
        password = _env(environ, cred.password_env, config.name) if cred.password_env else None
        return UpstreamLogin(cred.user, password)
    raise ConfigError(
        f"gateway {config.name}: credential grant {cred.grant!r} needs the broker, which this "
        "session does not use",
        hint="use credential: {env: {user: VAR, password: VAR}} until broker grants are wired",
    )


def _env(environ: Mapping[str, str], name: str, gateway: str) -> str:
    value = environ.get(name)
    if not value:
        raise ConfigError(
            f"gateway {gateway}: environment variable {name} is not set",
            hint=f"export {name} in the environment airlock runs in (the agent never sees it)",
        )
    return value


class _Refused(Exception):
    """The client connection must end with this ErrorResponse (already encoded)."""

    def __init__(self, error: bytes, what: str) -> None:
        super().__init__(what)
        self.error = error
        self.what = what


@dataclass
class _Shared:
    """What every connection of one gateway uses."""

    config: PostgresGatewayConfig
    login: UpstreamLogin
    masker: Masker
    record: Record
    approve: Approve
    ticket: TicketCheck
    guard: SqlGuard
    columns: ColumnMasker
    startup_timeout: float
    cancel_keys: dict[tuple[int, bytes], tuple[int, bytes]] = field(default_factory=dict)
    # RowDescription bytes -> (column masking plan, which columns are text): a result shape
    # seen before is not decoded again.
    row_plans: dict[bytes, tuple[ColumnPlan | None, tuple[bool, ...]]] = field(default_factory=dict)

    def row_plan(self, raw: bytes) -> tuple[ColumnPlan | None, tuple[bool, ...]]:
        known = self.row_plans.get(raw)
        if known is None:
            message = pg.decode_backend(raw)
            assert isinstance(message, pg.RowDescription)
            fields = message.fields
            known = (self.columns.plan(fields), tuple(f.format == 0 for f in fields))
            if len(self.row_plans) >= _MAX_ROW_PLANS:
                self.row_plans.clear()
            self.row_plans[raw] = known
        return known

    def event(self, type_: str, data: dict[str, Any]) -> object:
        return self.record(type_, {"gateway": self.config.name, **data})

    def error_event(self, what: str, **data: Any) -> None:
        self.event(EventType.ERROR, {"component": _COMPONENT, "error": what, **data})


class PostgresGateway:
    """A running gateway. ``address`` is where it listens; ``close()`` stops it."""

    def __init__(self, server: asyncio.Server, shared: _Shared) -> None:
        self._server = server
        self._shared = shared
        self._tasks: set[asyncio.Task[None]] = set()
        sock = server.sockets[0].getsockname()
        self.address: tuple[str, int] = (sock[0], sock[1])

    @property
    def name(self) -> str:
        """The gateway's name in the policy."""
        return self._shared.config.name

    async def close(self) -> None:
        """Stop listening and end every open connection."""
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await _Connection(self._shared, reader, writer).run()
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
    shared = _Shared(
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
        on_client, config.listen_host, config.listen_port, limit=_READ
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


# ------------------------------------------------------------------------------ connection


@dataclass
class _Inflight:
    """A statement sent upstream whose results are still coming."""

    query_seq: object
    started: float
    batch: int
    simple: bool
    rows: int = 0


@dataclass(frozen=True)
class _Held:
    """A statement waiting for approval, and what is needed to send or refuse it after."""

    verdict: Verdict
    masked: str
    raw: bytes
    parse: pg.Parse | None


class _Pipe(asyncio.Protocol):
    """The relay-phase protocol of one side: bytes and end of stream go to the connection,
    flow control to the other side (``peer``). The stream protocol it replaces still learns of
    the connection's end, so the stream writer's ``wait_closed`` returns."""

    def __init__(
        self,
        on_data: Callable[[bytes], None],
        on_eof: Callable[[], None],
        previous: asyncio.BaseProtocol,
        peer: asyncio.Transport,
        may_resume_peer: Callable[[], bool] = lambda: True,
    ) -> None:
        self._on_data = on_data
        self._on_eof = on_eof
        self._previous = previous
        self._peer = peer
        self._may_resume_peer = may_resume_peer
        self.paused = False

    def data_received(self, data: bytes) -> None:
        self._on_data(data)

    def eof_received(self) -> bool | None:
        self._on_eof()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self._on_eof()
        finally:
            self._previous.connection_lost(exc)

    def pause_writing(self) -> None:
        self.paused = True
        self._peer.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        if self._may_resume_peer():
            self._peer.resume_reading()


class _Connection:
    """One client connection and its upstream connection."""

    def __init__(
        self, shared: _Shared, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.s = shared
        self.client_r = reader
        self.client_w = writer
        self.up_r: asyncio.StreamReader | None = None
        self.up_w: asyncio.StreamWriter | None = None
        self.conn_id = secrets.token_hex(4)
        self.nonce = secrets.token_hex(6)
        self.refusals: dict[str, tuple[bytes, str]] = {}
        self.refusal_count = 0
        self.statements: dict[str, tuple[str, Verdict]] = {}
        self.portals: dict[str, pg.Bind] = {}
        self.inflight: deque[_Inflight] = deque()
        self.batches_sent = 0
        self.batches_done = 0
        self.tx_status = "I"
        self.column_plan: ColumnPlan | None = None
        self.upstream_parser = pg.BackendParser()
        self.text_columns: tuple[bool, ...] = ()
        self.cancel_key: tuple[int, bytes] | None = None
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.client_t = cast(asyncio.Transport, writer.transport)
        self.up_t: asyncio.Transport = self.client_t  # the upstream's, once connected
        self.client_framer = pg.Framer(pg.FRONTEND_TYPES)
        self.client_backlog = b""  # whole messages that came while a statement was held
        self.up_framer = pg.Framer(pg.BACKEND_TYPES)
        self.up_pipe: _Pipe | None = None
        self.holding: asyncio.Task[None] | None = None
        self.after_password = b""  # what a client pipelined behind its password, relayed later

    async def run(self) -> None:
        try:
            startup = await asyncio.wait_for(self._startup(), self.s.startup_timeout)
            if startup is None:
                return
            await self._authenticate_client(startup)
            await self._connect_upstream(startup)
            await self._relay()
        except TimeoutError:
            await self._fail(_fatal("08P01", "startup timed out"), "client startup timed out")
        except _Refused as refused:
            await self._fail(refused.error, refused.what)
        except pg.ProtocolError as exc:
            await self._fail(_fatal("08P01", f"protocol violation: {exc}"), str(exc))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if self.cancel_key is not None:
                self.s.cancel_keys.pop(self.cancel_key, None)
            if self.up_w is not None:
                self.up_w.close()

    async def _fail(self, error: bytes, what: str) -> None:
        self.s.error_event(what, connection=self.conn_id)
        with contextlib.suppress(Exception):
            self.client_w.write(error)
            await self.client_w.drain()

    # -------------------------------------------------------------------- client side

    async def _startup(self) -> pg.StartupMessage | None:
        parser = pg.FrontendParser()
        while True:
            message = parser.next_message()
            if message is None:
                data = await self.client_r.read(pg.MAX_STARTUP)
                if not data:
                    return None
                parser.feed(data)
                continue
            if isinstance(message, pg.SSLRequest | pg.GSSENCRequest):
                if parser.buffered:  # bytes after SSLRequest before our answer: injection
                    raise pg.ProtocolError("data received before the SSL answer")
                self.client_w.write(b"N")  # loopback: no TLS between agent and gateway
                await self.client_w.drain()
            elif isinstance(message, pg.CancelRequest):
                await self._forward_cancel(message)
                return None
            else:
                assert isinstance(message, pg.StartupMessage)
                if parser.buffered:
                    raise pg.ProtocolError("data received before authentication")
                return message

    async def _forward_cancel(self, request: pg.CancelRequest) -> None:
        target = self.s.cancel_keys.get((request.pid, request.key))
        if target is None:
            return  # PostgreSQL says nothing either way
        upstream = self.s.config.upstream
        with contextlib.suppress(OSError, TimeoutError):
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(upstream.host, upstream.port), CONNECT_TIMEOUT
            )
            writer.write(pg.encode_cancel(*target))
            await writer.drain()
            writer.close()

    async def _authenticate_client(self, startup: pg.StartupMessage) -> None:
        if startup.version & 0xFFFF:
            options = tuple(k for k in startup.params if k.startswith("_pq_."))
            self.client_w.write(pg.encode_negotiate(0, options))
        self.client_w.write(pg.encode_auth(3))  # cleartext: loopback, and it is only a ticket
        await self.client_w.drain()
        parser = pg.FrontendParser()
        parser.in_startup = False
        message = await _read_one(self.client_r, parser)
        if not isinstance(message, pg.PasswordMessage):
            raise pg.ProtocolError("expected a password message")
        self.after_password = parser.take_buffered()
        if not self.s.ticket.check(message.data.rstrip(b"\0")):
            raise _Refused(
                _fatal(
                    "28P01",
                    f"password authentication failed for the Airlock gateway {self.s.config.name}",
                    hint="use the session ticket Airlock gave you as the password "
                    "(PGPASSWORD / DATABASE_URL), not a database password",
                ),
                "client presented a wrong ticket",
            )

    # ------------------------------------------------------------------ upstream side

    async def _connect_upstream(self, startup: pg.StartupMessage) -> None:
        upstream = self.s.config.upstream
        try:
            self.up_r, self.up_w = await asyncio.wait_for(
                asyncio.open_connection(upstream.host, upstream.port, limit=_READ),
                CONNECT_TIMEOUT,
            )
            await self._upstream_tls()
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise _Refused(
                _fatal(
                    "08006",
                    f"the Airlock gateway {self.s.config.name} cannot reach its upstream database",
                    hint="check the gateway's upstream host, port and tls settings and that the "
                    "database is up",
                ),
                f"upstream unreachable: {type(exc).__name__}",
            ) from None
        assert self.up_w is not None
        params = {"user": self.s.login.user, "database": upstream.database}
        params.update({k: v for k, v in startup.params.items() if k in _PASSED_PARAMS})
        self.up_w.write(pg.encode_startup(params))
        await self._upstream_login()

    async def _upstream_tls(self) -> None:
        tls = self.s.config.upstream.tls
        assert self.up_r is not None and self.up_w is not None
        if tls == "disable":
            return
        self.up_w.write(pg.encode_ssl_request())
        await self.up_w.drain()
        answer = await self.up_r.readexactly(1)
        if answer == b"S":
            await self.up_w.start_tls(self._tls_context(), server_hostname=self._sni())
        elif answer != b"N" or tls != "prefer":
            raise ssl.SSLError(f"upstream refused TLS (tls: {tls})")

    def _tls_context(self) -> ssl.SSLContext:
        upstream = self.s.config.upstream
        if upstream.tls == "verify-full":
            return ssl.create_default_context(cafile=upstream.ca_file)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # prefer/require: encrypted, not authenticated
        return context

    def _sni(self) -> str | None:
        return self.s.config.upstream.host if self.s.config.upstream.tls == "verify-full" else None

    async def _upstream_login(self) -> None:
        assert self.up_r is not None and self.up_w is not None
        parser = pg.BackendParser()
        scram: ScramClient | None = None
        greeting = bytearray(pg.encode_auth(0))
        while True:
            message = await _read_one(self.up_r, parser)
            if isinstance(message, pg.Authentication):
                scram = self._answer_auth(message, scram)
                await self.up_w.drain()
            elif isinstance(message, pg.ErrorResponse):
                raise _Refused(self._masked_error(message), "upstream refused the login")
            elif isinstance(message, pg.BackendKeyData):
                greeting += self._our_key(message)
            elif isinstance(message, pg.ReadyForQuery):
                greeting += message.raw
                self.client_w.write(bytes(greeting))
                await self.client_w.drain()
                self.upstream_parser = parser
                return
            else:
                greeting += message.raw

    def _answer_auth(self, message: pg.Authentication, scram: ScramClient | None) -> Any:
        assert self.up_w is not None
        login = self.s.login
        if message.code == 0:
            return scram
        if message.code == 3 and login.password is not None:
            self.up_w.write(pg.encode_password(login.password.encode() + b"\0"))
        elif message.code == 5 and login.password is not None:
            self.up_w.write(pg.encode_password(_md5(login, message.data[:4])))
        elif message.code == 10 and login.password is not None:
            if MECHANISM.encode() not in message.data.split(b"\0"):
                raise self._login_error("upstream offers no SCRAM-SHA-256")
            scram = ScramClient(login.password)
            self.up_w.write(pg.encode_password(scram.first()))
        elif message.code == 11 and scram is not None:
            self.up_w.write(pg.encode_password(scram.final(message.data)))
        elif message.code == 12 and scram is not None:
            scram.verify(message.data)
        else:
            raise self._login_error(f"unsupported upstream authentication (code {message.code})")
        return scram

    def _login_error(self, what: str) -> _Refused:
        return _Refused(
            _fatal(
                "28000",
                f"the Airlock gateway {self.s.config.name} cannot log in upstream",
                hint="the held credential or the upstream's authentication method does not fit; "
                "see the session log",
            ),
            what,
        )

    def _our_key(self, message: pg.BackendKeyData) -> bytes:
        pid = secrets.randbelow(2**31 - 1) + 1
        key = secrets.token_bytes(4)
        self.cancel_key = (pid, key)
        self.s.cancel_keys[self.cancel_key] = (message.pid, message.key)
        return pg.encode_backend_key(pid, key)

    # -------------------------------------------------------------------------- relay
    #
    # The relay runs in protocol callbacks, not tasks: bytes from one side are judged, recorded
    # and masked in the callback that receives them and leave in one write to the other side.
    # Flow control passes through (a slow client pauses reading upstream, and the reverse);
    # a statement held for approval pauses reading from the client until it is answered.

    async def _relay(self) -> None:
        assert self.up_r is not None and self.up_w is not None
        client_t, up_t = self.client_t, cast(asyncio.Transport, self.up_w.transport)
        self.up_t = up_t
        # Bytes the stream readers already hold (none from well-behaved peers) come first.
        early_client = self.after_password + _take_buffered(self.client_r)
        self.after_password = b""
        early_up = self.upstream_parser.take_buffered() + _take_buffered(self.up_r)
        client_eof, up_eof = self.client_r.at_eof(), self.up_r.at_eof()
        client_pipe = _Pipe(self._on_client_data, self._finish, client_t.get_protocol(), peer=up_t)
        up_pipe = _Pipe(
            self._on_upstream_data,
            self._on_upstream_eof,
            up_t.get_protocol(),
            peer=client_t,
            may_resume_peer=lambda: self.holding is None,
        )
        self.up_pipe = up_pipe
        client_t.set_protocol(client_pipe)
        up_t.set_protocol(up_pipe)
        try:
            if early_up:
                self._on_upstream_data(early_up)
            if early_client:
                self._on_client_data(early_client)
            if up_eof:
                self._on_upstream_eof()
            if client_eof:
                self._finish()
            client_t.resume_reading()
            up_t.resume_reading()
            await self.finished
        finally:
            self._finish()
            if self.holding is not None:
                self.holding.cancel()

    def _finish(self, exc: BaseException | None = None) -> None:
        if self.finished.done():
            return
        if exc is None:
            self.finished.set_result(None)
        else:
            self.finished.set_exception(exc)

    def _on_upstream_eof(self) -> None:
        if self.finished.done():
            return
        self.s.error_event("upstream connection lost", connection=self.conn_id)
        self.client_t.write(
            _fatal(
                "08006",
                f"the Airlock gateway {self.s.config.name} lost its upstream connection",
                hint="reconnect; if it keeps happening, check the upstream database",
            )
        )
        self._finish()

    def _on_client_data(self, data: bytes) -> None:
        if self.finished.done():
            return
        try:
            buf, frames = self.client_framer.split(data)
            if not frames:
                return
            if self.holding is not None:
                self.client_backlog += buf[frames[0][1] : frames[-1][2]]
            else:
                self._pump_client(buf, frames)
        except Exception as exc:
            self._finish(exc)

    def _pump_client(self, buf: bytes, frames: list[pg.Frame]) -> None:
        """Judge, record and forward the client's whole messages in one write: runs that need
        no change go as they came. Stops at a statement held for approval (the messages after
        it wait in the backlog) and at Terminate."""
        pieces: list[bytes] = []
        last = 0
        for kind, start, end in frames:
            if kind in _CLIENT_PASSED:
                continue
            raw = buf[start:end]
            if kind == _QUERY:
                self.batches_sent += 1
                forward = self._statement(_cstring(raw, "Query"), raw, simple=True)
            elif kind == _SYNC:
                if end - start != 5:
                    raise pg.ProtocolError("Sync message has trailing bytes")
                self.batches_sent += 1
                continue
            elif kind == _TERMINATE:
                pieces.append(buf[last:end])
                self.up_t.write(b"".join(pieces))
                self._finish()
                return
            else:
                forward = self._from_client(pg.decode_frontend(raw))
            if forward is raw:
                continue
            pieces.append(buf[last:start])
            last = end
            if isinstance(forward, _Held):
                self.up_t.write(b"".join(pieces))  # allowed on their own: they go now
                self.client_backlog = buf[end : frames[-1][2]]
                self.client_t.pause_reading()
                self.holding = asyncio.get_running_loop().create_task(self._hold(forward))
                return
            pieces.append(forward)
        done = frames[-1][2]
        if not pieces:
            self.up_t.write(buf if done == len(buf) else buf[:done])
        else:
            pieces.append(buf[last:done])
            self.up_t.write(b"".join(pieces))

    async def _hold(self, held: _Held) -> None:
        try:
            decision = await self._ask(held.verdict.final, held.masked)
            if decision.action == "allow":
                self.up_t.write(held.raw)
            else:
                self.up_t.write(self._refused(decision, held.verdict, held.parse, asked=True))
            self.holding = None
            backlog, self.client_backlog = self.client_backlog, b""
            if backlog:
                self._pump_client(*pg.Framer(pg.FRONTEND_TYPES).split(backlog))
            if self.holding is None and not (self.up_pipe and self.up_pipe.paused):
                self.client_t.resume_reading()
        except Exception as exc:
            self._finish(exc)

    def _from_client(self, message: pg.Message) -> bytes | _Held:
        """The bytes to send upstream for ``message``, or the statement to hold for approval."""
        if isinstance(message, pg.Query):
            self.batches_sent += 1
            return self._statement(message.sql, message.raw, simple=True)
        if isinstance(message, pg.Parse):
            verdict = self.s.guard.verdict(message.sql)
            self.statements[message.name] = (message.sql, verdict)
            return self._statement(message.sql, message.raw, parse=message, verdict=verdict)
        if isinstance(message, pg.Bind):
            self.portals[message.portal] = message
        elif isinstance(message, pg.Execute):
            self._record_execute(message)
        elif isinstance(message, pg.Sync):
            self.batches_sent += 1
        elif isinstance(message, pg.Close):
            (self.statements if message.target == "S" else self.portals).pop(message.name, None)
        elif isinstance(message, pg.FunctionCall):
            self.batches_sent += 1
            return self._refusal(
                "airlock.function_call",
                "the fastpath function call interface is not allowed through the gateway",
                "call the function in SQL (SELECT f(...)) so guardrails can judge it",
            )
        elif isinstance(message, pg.PasswordMessage):
            raise pg.ProtocolError("unexpected password message after login")
        return message.raw

    def _statement(
        self,
        sql: str,
        raw: bytes,
        *,
        simple: bool = False,
        parse: pg.Parse | None = None,
        verdict: Verdict | None = None,
    ) -> bytes | _Held:
        verdict = verdict or self.s.guard.verdict(sql)
        masked = self.s.masker.mask_text(sql)
        if simple:
            seq = self.s.event(
                EventType.DB_QUERY,
                {
                    "connection": self.conn_id,
                    "protocol": "simple",
                    "sql": masked,
                    "kinds": list(verdict.kinds),
                },
            )
            self.inflight.append(_Inflight(seq, time.monotonic(), self.batches_sent, True))
        decision = verdict.final
        if verdict.notable:
            self._record_decisions(verdict, masked)
        if decision.action == "require_approval":
            return _Held(verdict, masked, raw, parse)
        if decision.action == "allow":
            return raw
        return self._refused(decision, verdict, parse, asked=False)

    def _record_decisions(self, verdict: Verdict, masked: str) -> None:
        for decision, kinds in verdict.notable:
            self.s.event(
                EventType.GUARDRAIL,
                {
                    "connection": self.conn_id,
                    "rule_id": decision.rule_id,
                    "action": decision.action,
                    "kinds": list(kinds),
                    "statement": decision.index,
                    "sql": masked,
                },
            )

    async def _ask(self, decision: Decision, masked: str) -> Decision:
        operation = Operation(
            kind="sql",
            text=masked,
            rule_id=decision.rule_id,
            gateway=self.s.config.name,
            session_id=self.s.ticket.session_id,
        )
        try:
            answer = self.s.approve(operation)
            approved = bool(await answer if inspect.isawaitable(answer) else answer)
        except Exception as exc:  # fail closed: no answer is a no
            self.s.error_event(f"approval failed: {type(exc).__name__}", rule_id=decision.rule_id)
            approved = False
        action: Action = "allow" if approved else "deny"
        self.s.event(
            EventType.GUARDRAIL,
            {
                "connection": self.conn_id,
                "rule_id": decision.rule_id,
                "action": action,
                "approval": "approved" if approved else "denied",
            },
        )
        return Decision(action, decision.rule_id, decision.index)

    def _refused(
        self, decision: Decision, verdict: Verdict, parse: pg.Parse | None, *, asked: bool
    ) -> bytes:
        kinds = ", ".join(verdict.statement_kinds[decision.index])
        why = "approval was denied for" if asked else "refused by"
        return self._refusal(
            decision.rule_id,
            f"Airlock gateway {self.s.config.name}: statement {decision.index + 1} ({kinds}) "
            f"{why} guardrail {decision.rule_id}",
            "the session policy's guardrails hold this statement; ask for the policy to change "
            "or run a narrower statement",
            parse,
        )

    def _refusal(
        self, rule_id: str, message: str, hint: str, parse: pg.Parse | None = None
    ) -> bytes:
        self.refusal_count += 1
        token = f"airlock_refused_{self.nonce}_{self.refusal_count}"
        error = pg.encode_error("42501", message, hint=hint, detail=f"rule {rule_id}")
        self.refusals[token] = (error, message)
        poison = f'SELECT "{token}"'
        if parse is not None:
            return pg.encode_parse(parse.name, poison)
        return pg.encode_query(poison)

    def _record_execute(self, message: pg.Execute) -> None:
        bind = self.portals.get(message.portal)
        known = self.statements.get(bind.statement) if bind is not None else None
        sql, verdict = known or ("", self.s.guard.verdict(""))
        seq = self.s.event(
            EventType.DB_QUERY,
            {
                "connection": self.conn_id,
                "protocol": "extended",
                "sql": self.s.masker.mask_text(sql),
                "params": self._params(bind),
                "kinds": list(verdict.kinds),
            },
        )
        self.inflight.append(_Inflight(seq, time.monotonic(), self.batches_sent + 1, False))

    def _params(self, bind: pg.Bind | None) -> list[str | None]:
        if bind is None:
            return []
        formats = bind.param_formats
        out: list[str | None] = []
        for i, value in enumerate(bind.params):
            fmt = formats[0] if len(formats) == 1 else (formats[i] if i < len(formats) else 0)
            if value is None:
                out.append(None)
            elif fmt == 1:  # binary: not rendered, so nothing secret can leak through it
                out.append(f"<binary {len(value)} bytes>")
            else:
                out.append(self.s.masker.mask_text(value.decode("utf-8", "replace")))
        return out

    def _on_upstream_data(self, data: bytes) -> None:
        """Forward what upstream sent in one write: runs of messages that need no change go
        as they came; only changed messages (masked rows, swapped errors) are re-encoded."""
        if self.finished.done():
            return
        try:
            buf, frames = self.up_framer.split(data)
            if frames:
                self.client_t.write(self._rewrite(buf, frames))
        except Exception as exc:
            self._finish(exc)

    def _rewrite(self, buf: bytes, frames: list[pg.Frame]) -> bytes:
        pieces: list[bytes] = []
        last = 0
        for kind, start, end in frames:
            if kind == _DATA_ROW:
                new = self._data_row(buf, start, end)
            elif kind in _PASSED:
                continue
            elif kind == _COPY_DATA:
                new = self._copy_data(buf, start, end)
            elif kind == _COMMAND_COMPLETE:
                self._result(tag=_cstring(buf[start:end], "CommandComplete"))
                self.column_plan = None
                continue
            elif kind == _READY:
                if end - start != 6:
                    raise pg.ProtocolError("ReadyForQuery message has a bad length")
                self.tx_status = chr(buf[start + 5])
                self._ready()
                continue
            elif kind == _ROW_DESCRIPTION:
                self.column_plan, self.text_columns = self.s.row_plan(buf[start:end])
                continue
            else:
                new = self._from_upstream(pg.decode_backend(buf[start:end]))
            if new is not None:
                pieces += (buf[last:start], new)
                last = end
        done = frames[-1][2]
        if not pieces:
            return buf if done == len(buf) else buf[:done]
        pieces.append(buf[last:done])
        return b"".join(pieces)

    def _from_upstream(self, message: pg.Message) -> bytes | None:
        """The bytes that replace ``message`` on the way to the client; None: unchanged.

        RowDescription, DataRow, CommandComplete and ReadyForQuery take the fast paths in
        :meth:`_rewrite` and never come here."""
        if isinstance(message, pg.EmptyQueryResponse):
            self._result(tag="")
        elif isinstance(message, pg.ErrorResponse):
            return self._error(message)
        elif isinstance(message, pg.NoticeResponse):
            return self._changed(message)
        elif isinstance(message, pg.Simple) and message.type == "s":
            self._result(tag="(suspended)")
        return None

    def _data_row(self, buf: bytes, start: int, end: int) -> bytes | None:
        head = self.inflight[0] if self.inflight else None
        if head is not None:
            head.rows += 1
        plan = self.column_plan
        mask_values = self.s.config.mask_values
        if plan is None:
            if not mask_values:
                return None
            raw = buf[start:end]
            if self.s.masker.mask_bytes(raw) == raw:  # one scan of the row: the common case
                return None
        else:
            raw = buf[start:end]
        row = pg.decode_backend(raw)
        assert isinstance(row, pg.DataRow)
        values = list(row.values)
        changed = False
        if plan is not None:
            for i, (masked, replacement) in enumerate(plan):
                if masked and i < len(values) and values[i] is not None:
                    values[i] = replacement
                    changed = True
        if mask_values:
            changed |= self._mask_values(values)
        return pg.encode_data_row(values) if changed else None

    def _copy_data(self, buf: bytes, start: int, end: int) -> bytes | None:
        """COPY ... TO STDOUT data (one row per message): value masking only, as the COPY
        stream names no columns."""
        if not self.s.config.mask_values:
            return None
        data = buf[start + 5 : end]
        masked = self.s.masker.mask_bytes(data)
        return None if masked == data else pg.encode_message(b"d", masked)

    def _text(self, index: int) -> bool:
        return index < len(self.text_columns) and self.text_columns[index]

    def _mask_values(self, values: list[bytes | None]) -> bool:
        masker = self.s.masker
        changed = False
        for i, value in enumerate(values):
            if value is not None and self._text(i):
                masked = masker.mask_bytes(value)
                if masked != value:
                    values[i] = masked
                    changed = True
        return changed

    def _error(self, message: pg.ErrorResponse) -> bytes | None:
        token = _refusal_token(message.message)
        replacement = self.refusals.pop(token, None) if token else None
        if replacement is not None:
            self._result(error=("42501", replacement[1]))
            return replacement[0]
        masked = self._changed(message)
        if message.fields.get("V", message.fields.get("S")) in ("FATAL", "PANIC"):
            self.s.error_event(
                f"upstream ended the session ({message.sqlstate})", connection=self.conn_id
            )
        self._result(error=(message.sqlstate, self.s.masker.mask_text(message.message)))
        return masked

    def _masked_error(self, message: pg.ErrorResponse | pg.NoticeResponse) -> bytes:
        return self._changed(message) or message.raw

    def _changed(self, message: pg.ErrorResponse | pg.NoticeResponse) -> bytes | None:
        """``message`` with its fields masked; None when nothing needed masking."""
        masker = self.s.masker
        fields = {k: masker.mask_text(v) for k, v in message.fields.items()}
        if fields == dict(message.fields):
            return None
        body = b"".join(k.encode() + v.encode() + b"\0" for k, v in fields.items()) + b"\0"
        return pg.encode_message(message.raw[:1], body)

    def _result(self, *, tag: str | None = None, error: tuple[str, str] | None = None) -> None:
        head = self.inflight[0] if self.inflight else None
        if head is None:
            return
        data: dict[str, Any] = {
            "connection": self.conn_id,
            "query": head.query_seq if isinstance(head.query_seq, int) else None,
            "rows": _rows(tag, head.rows),
            "duration_ms": round((time.monotonic() - head.started) * 1000, 3),
        }
        if tag is not None:
            data["tag"] = tag
        if error is not None:
            data["error"] = {"sqlstate": error[0], "message": error[1]}
        self.s.event(EventType.DB_RESULT, data)
        head.rows = 0
        head.started = time.monotonic()
        if not head.simple:  # a simple Query ends at ReadyForQuery, after all its statements
            self.inflight.popleft()

    def _ready(self) -> None:
        self.batches_done += 1
        while self.inflight and self.inflight[0].batch <= self.batches_done:
            self.inflight.popleft()
        if self.batches_done >= self.batches_sent:
            self.refusals.clear()  # refusals skipped by an earlier error never come back


def _cstring(raw: bytes, what: str) -> str:
    """The one NUL-terminated string that is the whole body of message ``raw``."""
    if raw.find(b"\0", 5) != len(raw) - 1:
        raise pg.ProtocolError(f"{what} message is malformed")
    return raw[5:-1].decode("utf-8", "replace")


def _take_buffered(reader: asyncio.StreamReader) -> bytes:
    """Empty ``reader``'s buffer without waiting (StreamReader has no public call for it)."""
    held = getattr(reader, "_buffer", None)
    if not isinstance(held, bytearray):  # never drop what a peer sent: refuse to relay instead
        raise RuntimeError("asyncio.StreamReader keeps no _buffer in this Python: cannot relay")
    data = bytes(held)
    held.clear()
    return data


def _refusal_token(message: str) -> str | None:
    start = message.find('"airlock_refused_')
    if start < 0:
        return None
    end = message.find('"', start + 1)
    return message[start + 1 : end] if end > start else None


def _rows(tag: str | None, counted: int) -> int:
    if tag:
        last = tag.rsplit(" ", 1)[-1]
        if last.isdigit():
            return int(last)
    return counted


def _md5(login: UpstreamLogin, salt: bytes) -> bytes:
    assert login.password is not None
    inner = hashlib.md5((login.password + login.user).encode(), usedforsecurity=False).hexdigest()
    outer = hashlib.md5(inner.encode() + salt, usedforsecurity=False).hexdigest()
    return b"md5" + outer.encode() + b"\0"


def _fatal(sqlstate: str, message: str, *, hint: str | None = None) -> bytes:
    return pg.encode_error(sqlstate, message, severity="FATAL", hint=hint)


async def _read_one(reader: asyncio.StreamReader, parser: Any) -> pg.Message:
    while True:
        message = parser.next_message()
        if message is not None:
            return message  # type: ignore[no-any-return]
        data = await reader.read(_READ)
        if not data:
            raise ConnectionError("peer closed the connection")
        parser.feed(data)
