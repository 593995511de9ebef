"""One client connection of the PostgreSQL gateway and its upstream connection: startup and
ticket check (:mod:`.login`), upstream login, then the I/O around the sans-I/O
:class:`~.relay.Relay` that judges, records and masks (this module moves bytes, through asyncio's
transports or the compiled I/O loop of :mod:`.native`, holds statements while approvers answer,
and ends holds whose client went away)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import secrets
import threading
from typing import cast

from airlock.events import EventType
from airlock.gate.interface import Operation
from airlock.gateway.peer import peer_closed
from airlock.gateway.postgres import upstream
from airlock.gateway.postgres._shared import Refused, Shared, fatal, take_buffered
from airlock.gateway.postgres.encode import encode_backend_key
from airlock.gateway.postgres.framing import BackendParser
from airlock.gateway.postgres.login import authenticate_client, read_startup
from airlock.gateway.postgres.messages import BackendKeyData, ProtocolError, StartupMessage
from airlock.gateway.postgres.native import (
    UPSTREAM,
    LoopWires,
    TransportWires,
    Wires,
    native_ready,
)
from airlock.gateway.postgres.pipe import Pipe
from airlock.gateway.postgres.relay import Held, Relay, Step
from airlock.gateway.tickets import BrokerTicket, check_ticket
from airlock.policy.guardrails import Action, Decision

__all__ = ["TICKET_RULE", "Connection"]

TICKET_RULE = "airlock.ticket_revoked"  # a held statement whose ticket ended before its approval


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
        self.relay = Relay(shared, self.conn_id)
        self.upstream_parser = BackendParser()
        self.cancel_key: tuple[int, bytes] | None = None
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.client_t = cast(asyncio.Transport, writer.transport)
        self.up_t: asyncio.Transport = self.client_t  # the upstream's, once connected
        self.up_pipe: Pipe | None = None
        self.wires: Wires = TransportWires(self.client_t, self.client_t, lambda: True)
        # The relay's state is changed under this lock: with the compiled I/O loop, bytes are
        # relayed on its thread while holds end on the event loop's. ``stopped``: nothing more
        # is relayed (an error, or Terminate), at once: the end follows on the loop's thread.
        self.lock = threading.RLock()
        self.stopped = False
        self.holding: asyncio.Task[None] | None = None
        self.after_password = b""  # what a client pipelined behind its password, relayed later
        self.presented = b""  # the ticket the client logged in with: checked again after holds

    async def run(self) -> None:
        try:
            startup = await asyncio.wait_for(
                read_startup(self.s, self.client_r, self.client_w), self.s.startup_timeout
            )
            if startup is None:
                return
            self.presented, self.after_password = await authenticate_client(
                self.s, self.client_r, self.client_w, startup
            )
            await self._connect_upstream(startup)
            await self._relay()
        except TimeoutError:
            await self._fail(fatal("08P01", "startup timed out"), "client startup timed out")
        except Refused as refused:
            await self._fail(refused.error, refused.what)
        except ProtocolError as exc:
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

    # ------------------------------------------------------------------ upstream side

    async def _connect_upstream(self, startup: StartupMessage) -> None:
        self.up_r, self.up_w = await upstream.connect(self.s, startup)
        parser, greeting = await upstream.login(
            self.s, self.up_r, self.up_w, self._our_key, self.relay
        )
        self.client_w.write(greeting)
        await self.client_w.drain()
        self.upstream_parser = parser

    def _our_key(self, message: BackendKeyData) -> bytes:
        pid = secrets.randbelow(2**31 - 1) + 1
        key = secrets.token_bytes(4)
        self.cancel_key = (pid, key)
        self.s.cancel_keys[self.cancel_key] = (message.pid, message.key)
        return encode_backend_key(pid, key)

    # -------------------------------------------------------------------------- relay
    #
    # The relay runs in protocol callbacks, not tasks: bytes from one side are judged, recorded
    # and masked in the callback that receives them and leave in one write to the other side.
    # Flow control passes through (a slow client pauses reading upstream, and the reverse).
    # While a statement is held for approval the client is still read (what it sends waits in
    # a backlog, up to relay.MAX_BACKLOG; past it the client is disconnected, never paused), so
    # that a client going away cancels the hold: a held statement is never sent for a client
    # that is gone.

    async def _relay(self) -> None:
        assert self.up_r is not None and self.up_w is not None
        client_t, up_t = self.client_t, cast(asyncio.Transport, self.up_w.transport)
        self.up_t = up_t
        # Bytes the stream readers already hold (none from well-behaved peers) come first.
        early_client = self.after_password + take_buffered(self.client_r)
        self.after_password = b""
        early_up = self.upstream_parser.take_buffered() + take_buffered(self.up_r)
        client_eof, up_eof = self.client_r.at_eof(), self.up_r.at_eof()
        io = self.s.io_loop()
        native: LoopWires | None = None
        if io is not None and native_ready(client_t, up_t):
            with contextlib.suppress(OSError):  # then asyncio's transports move the bytes
                native = LoopWires(
                    io,
                    asyncio.get_running_loop(),
                    client_t,
                    up_t,
                    self._on_native_data,
                    self._on_native_end,
                )
                self.wires = native
        if native is None:
            self._pipes(client_t, up_t)
        watch: asyncio.Task[None] | None = None
        try:
            if early_up:
                self._on_upstream_data(early_up)
            if early_client:
                self._on_client_data(early_client)
            if up_eof:
                self._on_upstream_eof()
            if client_eof:
                self._finish()
            if native is not None:
                native.start()
            else:
                client_t.resume_reading()
                up_t.resume_reading()
            watch = self._watch_ticket()
            await self.finished
        finally:
            self._finish()
            if native is not None:
                native.stop()  # no bytes move for this connection after this
            if watch is not None:
                watch.cancel()
                await asyncio.gather(watch, return_exceptions=True)
            holding = self.holding
            if holding is not None:
                holding.cancel()
                await asyncio.gather(holding, return_exceptions=True)
            with self.lock:
                self.relay.cancelled()  # a hold whose task never got to run

    def _pipes(self, client_t: asyncio.Transport, up_t: asyncio.Transport) -> None:
        """Relay through the asyncio transports (no compiled I/O loop)."""
        client_pipe = Pipe(self._on_client_data, self._finish, client_t.get_protocol(), peer=up_t)
        up_pipe = Pipe(
            self._on_upstream_data,
            self._on_upstream_eof,
            up_t.get_protocol(),
            peer=client_t,
            may_resume_peer=lambda: self.holding is None,
        )
        self.up_pipe = up_pipe
        self.wires = TransportWires(client_t, up_t, lambda: not up_pipe.paused)
        client_t.set_protocol(client_pipe)
        up_t.set_protocol(up_pipe)

    def _on_native_data(self, side: int, data: bytes) -> None:
        """Bytes from the compiled I/O loop (on its thread)."""
        if side == UPSTREAM:
            self._on_upstream_data(data)
        else:
            self._on_client_data(data)

    def _on_native_end(self, side: int) -> None:
        """A side of the connection closed or failed (on the event loop's thread)."""
        if side == UPSTREAM:
            self._on_upstream_eof()
        else:
            self._finish()

    def _finish(self, exc: BaseException | None = None) -> None:
        if self.finished.done():
            return
        if exc is None:
            self.finished.set_result(None)
        else:
            self.finished.set_exception(exc)

    def _on_upstream_eof(self) -> None:
        with self.lock:
            if self.finished.done():
                return
            self.stopped = True
            self.s.error_event("upstream connection lost", connection=self.conn_id)
            self.wires.to_client(
                fatal(
                    "08006",
                    f"the Airlock gateway {self.s.config.name} lost its upstream connection",
                    hint="reconnect; if it keeps happening, check the upstream database",
                )
            )
            self._finish()

    def _on_client_data(self, data: bytes) -> None:
        with self.lock:
            if self.stopped or self.finished.done():
                return
            try:
                self._apply(self.relay.client_data(data))
            except Exception as exc:
                self.stopped = True
                self.wires.call(self._finish, exc)

    def _apply(self, step: Step) -> None:
        """Carry out ``step`` (the lock is held)."""
        if step.upstream:
            self.wires.to_upstream(step.upstream)
        if step.pause:
            self.wires.pause_client()
        if step.hold is not None:
            self.wires.call(self._start_hold, step.hold)
        if step.end:
            self.stopped = True
            self.wires.call(self._finish)

    def _start_hold(self, held: Held) -> None:
        if self.finished.done():  # the connection ended first: _relay cancelled the hold
            return
        self.holding = asyncio.get_running_loop().create_task(self._hold(held))

    async def _hold(self, held: Held) -> None:
        try:
            decision = await self._ask(held.verdict.final, held.masked)
            revoked = decision.action == "allow" and not await self._ticket_still_valid()
        except asyncio.CancelledError:
            with self.lock:
                self.relay.cancelled()
            raise
        try:
            with self.lock:
                if self.finished.done() or (
                    decision.action == "allow" and peer_closed(self._client_socket())
                ):  # the client went while the answer was on its way, or while it was unread
                    self.relay.cancelled()
                    self._finish()
                    return
                self.holding = None
                if revoked:
                    self.relay.revoked()
                    self._revoked()
                    return
                self._apply(self.relay.decided(decision))
                if self.relay.holding is None:
                    self.wires.resume_client()
        except Exception as exc:
            self._finish(exc)

    def _client_socket(self) -> object:
        """The client's socket (the compiled loop reads a duplicate of it: the same socket)."""
        return self.client_t.get_extra_info("socket")

    async def _ticket_still_valid(self) -> bool:
        """A hold can outlast the ticket (its job was revoked or ended meanwhile): ask again,
        past any cached answer, before the approved statement is sent."""
        valid = await check_ticket(self.s.ticket, self.presented, fresh=True)
        if not valid:
            self.s.event(
                EventType.GUARDRAIL,
                {
                    "connection": self.conn_id,
                    "rule_id": TICKET_RULE,
                    "action": "deny",
                    "reason": "the gateway ticket was revoked or expired while the statement "
                    "was held: never sent",
                },
            )
        return valid

    def _watch_ticket(self) -> asyncio.Task[None] | None:
        """Central mode: the ticket is checked again every ``recheck`` seconds while the
        connection is open, so a job revoked at the broker loses its open connections too."""
        ticket = self.s.ticket
        if not isinstance(ticket, BrokerTicket):
            return None  # a session's own ticket lives as long as the session and its gateway

        async def watch() -> None:
            while not self.finished.done():
                await asyncio.sleep(ticket.recheck)
                if await check_ticket(ticket, self.presented, fresh=True):
                    continue
                if not self.finished.done():
                    self.s.event(
                        EventType.GUARDRAIL,
                        {
                            "connection": self.conn_id,
                            "rule_id": TICKET_RULE,
                            "action": "deny",
                            "reason": "the gateway ticket was revoked or expired: connection ended",
                        },
                    )
                    self._revoked("while the connection was open")
                return

        return asyncio.get_running_loop().create_task(watch())

    def _revoked(self, when: str = "while a statement was held") -> None:
        """End a connection whose ticket no longer holds: nothing more is relayed for it."""
        with self.lock:
            self.stopped = True
            self.wires.to_client(
                fatal(
                    "28000",
                    f"the Airlock gateway {self.s.config.name} ended this connection: its ticket "
                    f"was revoked or expired {when} (rule {TICKET_RULE})",
                    hint="the job's tickets end with the job; run the statement again in a live "
                    "job",
                )
            )
            self._finish()

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

    def _on_upstream_data(self, data: bytes) -> None:
        with self.lock:
            if self.stopped or self.finished.done():
                return
            try:
                out = self.relay.results.feed(data)
                if out:
                    self.wires.to_client(out)
            except Exception as exc:
                self.stopped = True
                self.wires.call(self._finish, exc)
