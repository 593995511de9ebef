"""One client connection of the PostgreSQL gateway and its upstream connection: startup, ticket
check, upstream login, then the relay that judges, records and masks."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import secrets
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from airlock.events import EventType
from airlock.gate.interface import Operation
from airlock.gateway.postgres import protocol as pg
from airlock.gateway.postgres._shared import (
    CONNECT_TIMEOUT,
    READ_SIZE,
    Refused,
    Shared,
    cstring,
    fatal,
    md5_password,
    read_one,
    refusal_token,
    rows_of,
    take_buffered,
)
from airlock.gateway.postgres.guard import Verdict
from airlock.gateway.postgres.masking import ColumnPlan
from airlock.gateway.postgres.parse_state import (
    PARSE_STATE_RULE,
    SessionState,
    depends_on_backslashes,
    unsafe_encoding,
)
from airlock.gateway.postgres.scram import MECHANISM, ScramClient
from airlock.policy.guardrails import Action, Decision, SqlStatement

__all__ = ["Connection"]

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

_DATA_ROW, _ROW_DESCRIPTION, _COMMAND_COMPLETE, _READY, _COPY_DATA = b"DTCZd"
_QUERY, _TERMINATE, _SYNC = b"QXS"
# Frontend messages with nothing to judge or record: Describe, Flush, CopyData/Done/Fail.
_CLIENT_PASSED = frozenset(b"DHdcf")
# Backend messages the relay passes on without looking inside (the rest it decodes).
_PASSED = frozenset(b"123ntKVcGHWvR")
_PARAMETER_STATUS, _NOTIFICATION = b"SA"
# What a client may send while a statement is held (read so that its going away is seen);
# past this, reading pauses until the hold ends.
_MAX_BACKLOG = 1024 * 1024


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
    """A statement waiting for approval, and what is needed to send or refuse it after.

    ``portal`` is set for an extended-protocol Execute: the approval covers that one execution
    of the portal (its statement and parameter values), never a later Bind."""

    verdict: Verdict
    masked: str
    raw: bytes
    parse: pg.Parse | None
    portal: str | None = None


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


class Connection:
    """One client connection and its upstream connection."""

    def __init__(
        self, shared: Shared, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
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
        self.approved_portals: set[str] = set()  # held Executes approved, for that Bind only
        self.sql_prepared: dict[str, SqlStatement] = {}  # SQL PREPARE, for judging EXECUTE
        self.state = SessionState()
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
            await self._fail(fatal("08P01", "startup timed out"), "client startup timed out")
        except Refused as refused:
            await self._fail(refused.error, refused.what)
        except pg.ProtocolError as exc:
            await self._fail(fatal("08P01", f"protocol violation: {exc}"), str(exc))
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
        message = await read_one(self.client_r, parser)
        if not isinstance(message, pg.PasswordMessage):
            raise pg.ProtocolError("expected a password message")
        self.after_password = parser.take_buffered()
        if not self.s.ticket.check(message.data.rstrip(b"\0")):
            raise Refused(
                fatal(
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
                asyncio.open_connection(upstream.host, upstream.port, limit=READ_SIZE),
                CONNECT_TIMEOUT,
            )
            await self._upstream_tls()
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise Refused(
                fatal(
                    "08006",
                    f"the Airlock gateway {self.s.config.name} cannot reach its upstream database",
                    hint="check the gateway's upstream host, port and tls settings and that the "
                    "database is up",
                ),
                f"upstream unreachable: {type(exc).__name__}",
            ) from None
        assert self.up_w is not None
        self._check_startup_encoding(startup)
        params = {"user": self.s.login.user, "database": upstream.database}
        params.update({k: v for k, v in startup.params.items() if k in _PASSED_PARAMS})
        self.up_w.write(pg.encode_startup(params))
        await self._upstream_login()

    def _check_startup_encoding(self, startup: pg.StartupMessage) -> None:
        encoding = startup.params.get("client_encoding", "")
        if unsafe_encoding(encoding):
            raise Refused(
                fatal(
                    "22023",
                    f"the Airlock gateway {self.s.config.name} does not accept client_encoding "
                    f"{encoding[:40]}: the gateway would read SQL differently from the server "
                    f"(rule {PARSE_STATE_RULE})",
                    hint="connect with client_encoding UTF8 (PGCLIENTENCODING=UTF8)",
                ),
                f"client asked for client_encoding {encoding[:40]} ({PARSE_STATE_RULE})",
            )

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
            message = await read_one(self.up_r, parser)
            if isinstance(message, pg.Authentication):
                scram = self._answer_auth(message, scram)
                await self.up_w.drain()
            elif isinstance(message, pg.ErrorResponse):
                raise Refused(self._masked_error(message), "upstream refused the login")
            elif isinstance(message, pg.BackendKeyData):
                greeting += self._our_key(message)
            elif isinstance(message, pg.ReadyForQuery):
                greeting += message.raw
                self.client_w.write(bytes(greeting))
                await self.client_w.drain()
                self.upstream_parser = parser
                return
            else:
                if isinstance(message, pg.ParameterStatus):
                    self.state.update(message.name, message.value)
                greeting += message.raw

    def _answer_auth(self, message: pg.Authentication, scram: ScramClient | None) -> Any:
        assert self.up_w is not None
        login = self.s.login
        if message.code == 0:
            return scram
        if message.code == 3 and login.password is not None:
            self.up_w.write(pg.encode_password(login.password.encode() + b"\0"))
        elif message.code == 5 and login.password is not None:
            self.up_w.write(pg.encode_password(md5_password(login, message.data[:4])))
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

    def _login_error(self, what: str) -> Refused:
        return Refused(
            fatal(
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
    # Flow control passes through (a slow client pauses reading upstream, and the reverse).
    # While a statement is held for approval the client is still read (what it sends waits in
    # a backlog, up to _MAX_BACKLOG), so that a client going away cancels the hold: a held
    # statement is never sent for a client that is gone.

    async def _relay(self) -> None:
        assert self.up_r is not None and self.up_w is not None
        client_t, up_t = self.client_t, cast(asyncio.Transport, self.up_w.transport)
        self.up_t = up_t
        # Bytes the stream readers already hold (none from well-behaved peers) come first.
        early_client = self.after_password + take_buffered(self.client_r)
        self.after_password = b""
        early_up = self.upstream_parser.take_buffered() + take_buffered(self.up_r)
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
            holding = self.holding
            if holding is not None:
                holding.cancel()
                await asyncio.gather(holding, return_exceptions=True)

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
            fatal(
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
                if len(self.client_backlog) > _MAX_BACKLOG:
                    self.client_t.pause_reading()
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
                forward = self._statement(cstring(raw, "Query"), raw, simple=True)
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
        except asyncio.CancelledError:
            self._cancelled(held)
            raise
        try:
            if self.finished.done():  # the client went while the answer was on its way
                self._cancelled(held)
                return
            if decision.action == "allow":
                if held.portal is not None:
                    self.approved_portals.add(held.portal)
                self.up_t.write(held.raw)
            else:
                extended = held.portal is not None
                refused = self._refused(
                    decision, held.verdict, held.parse, asked=True, extended=extended
                )
                self.up_t.write(refused)
            self.holding = None
            backlog, self.client_backlog = self.client_backlog, b""
            if backlog:
                self._pump_client(*pg.Framer(pg.FRONTEND_TYPES).split(backlog))
            if self.holding is None and not (self.up_pipe and self.up_pipe.paused):
                self.client_t.resume_reading()
        except Exception as exc:
            self._finish(exc)

    def _cancelled(self, held: _Held) -> None:
        """The client went (or the gateway closed) while ``held`` waited: it is never sent."""
        self.s.event(
            EventType.APPROVAL_CANCELLED,
            {
                "connection": self.conn_id,
                "rule_id": held.verdict.final.rule_id,
                "sql": held.masked,
                "reason": "the client disconnected while the statement was held; never sent",
            },
        )
        self._result(error=("57014", "cancelled while held for approval: never sent"))

    def _from_client(self, message: pg.Message) -> bytes | _Held:
        """The bytes to send upstream for ``message``, or the statement to hold for approval."""
        if isinstance(message, pg.Query):
            self.batches_sent += 1
            return self._statement(message.sql, message.raw, simple=True)
        if isinstance(message, pg.Parse):
            verdict = self.s.guard.verdict(message.sql, self.sql_prepared)
            self.statements[message.name] = (message.sql, verdict)
            return self._statement(message.sql, message.raw, parse=message, verdict=verdict)
        if isinstance(message, pg.Bind):
            self.portals[message.portal] = message
            self.approved_portals.discard(message.portal)
        elif isinstance(message, pg.Execute):
            return self._execute(message)
        elif isinstance(message, pg.Sync):
            self.batches_sent += 1
        elif isinstance(message, pg.Close):
            (self.statements if message.target == "S" else self.portals).pop(message.name, None)
            if message.target != "S":
                self.approved_portals.discard(message.name)
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
        busy = bool(self.inflight)  # something running whose settings changes are not seen yet
        verdict = verdict or self.s.guard.verdict(sql, self.sql_prepared)
        for name, prepared in verdict.prepares:
            self.sql_prepared[name] = prepared
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
        why = self._parse_state(sql, busy)
        if why is not None:
            return self._refused_state(why, masked, parse)
        decision = verdict.final
        if verdict.notable:
            self._record_decisions(verdict, masked)
        if decision.action == "require_approval":
            if parse is not None:  # held at each Execute, with its parameter values
                return raw
            return _Held(verdict, masked, raw, parse)
        if decision.action == "allow":
            return raw
        return self._refused(decision, verdict, parse, asked=False)

    def _parse_state(self, sql: str, busy: bool) -> str | None:
        """Why the server may read ``sql`` differently from the gateway now (None: it won't)."""
        why = self.state.refuses(sql)
        if why is None and busy and depends_on_backslashes(sql):
            why = "a statement still running may have changed standard_conforming_strings"
        return why

    def _refused_state(self, why: str, masked: str, parse: pg.Parse | None) -> bytes:
        self.s.event(
            EventType.GUARDRAIL,
            {
                "connection": self.conn_id,
                "rule_id": PARSE_STATE_RULE,
                "action": "deny",
                "reason": why,
                "sql": masked,
            },
        )
        return self._refusal(
            PARSE_STATE_RULE,
            f"Airlock gateway {self.s.config.name}: statement refused by guardrail "
            f"{PARSE_STATE_RULE} ({why}): the server could read it differently from the gateway",
            "use standard_conforming_strings = on and client_encoding UTF8, and send a statement "
            "with backslashes in a plain string literal only after the previous results arrived "
            "(or write it as E'...')",
            parse,
        )

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
        self,
        decision: Decision,
        verdict: Verdict,
        parse: pg.Parse | None,
        *,
        asked: bool,
        extended: bool = False,
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
            extended=extended,
        )

    def _refusal(
        self,
        rule_id: str,
        message: str,
        hint: str,
        parse: pg.Parse | None = None,
        *,
        extended: bool = False,
    ) -> bytes:
        """What goes upstream instead of a refused message: a statement that fails at once
        (its error is swapped for ours on the way back). In place of a Parse, a Parse of the
        same name; in place of an Execute (``extended``), a Parse of a fresh name, which fails
        and so creates nothing; otherwise a Query."""
        self.refusal_count += 1
        token = f"airlock_refused_{self.nonce}_{self.refusal_count}"
        error = pg.encode_error("42501", message, hint=hint, detail=f"rule {rule_id}")
        self.refusals[token] = (error, message)
        poison = f'SELECT "{token}"'
        if parse is not None:
            return pg.encode_parse(parse.name, poison)
        if extended:
            return pg.encode_parse(token, poison)
        return pg.encode_query(poison)

    def _execute(self, message: pg.Execute) -> bytes | _Held:
        """Record an Execute; hold it when its statement needs approval. One approval covers
        this execution only (its statement and these parameter values): a new Bind asks again."""
        bind = self.portals.get(message.portal)
        known = self.statements.get(bind.statement) if bind is not None else None
        sql, verdict = known or ("", self.s.guard.verdict(""))
        masked = self.s.masker.mask_text(sql)
        params = self._params(bind)
        seq = self.s.event(
            EventType.DB_QUERY,
            {
                "connection": self.conn_id,
                "protocol": "extended",
                "sql": masked,
                "params": params,
                "kinds": list(verdict.kinds),
            },
        )
        self.inflight.append(_Inflight(seq, time.monotonic(), self.batches_sent + 1, False))
        if verdict.final.action != "require_approval" or message.portal in self.approved_portals:
            return message.raw
        text = f"{masked}\n-- parameters: {json.dumps(params)}" if params else masked
        return _Held(verdict, text, message.raw, None, portal=message.portal)

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
            elif kind == _NOTIFICATION:
                new = self._notification(buf, start, end)
            elif kind == _PARAMETER_STATUS:
                status = pg.decode_backend(buf[start:end])
                assert isinstance(status, pg.ParameterStatus)
                self.state.update(status.name, status.value)
                continue
            elif kind == _COPY_DATA:
                new = self._copy_data(buf, start, end)
            elif kind == _COMMAND_COMPLETE:
                self._result(tag=cstring(buf[start:end], "CommandComplete"))
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

    def _notification(self, buf: bytes, start: int, end: int) -> bytes | None:
        """NOTIFY channel and payload, masked (always: they are free text like an error)."""
        body = buf[start + 5 : end]
        masked = self.s.masker.mask_bytes(body[4:])
        if masked == body[4:]:
            return None
        return pg.encode_message(b"A", body[:4] + masked)

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
        token = refusal_token(message.message)
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
            "rows": rows_of(tag, head.rows),
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
