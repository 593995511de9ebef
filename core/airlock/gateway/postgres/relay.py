"""The PostgreSQL relay, sans-I/O (h11 style): bytes in, actions out.

:class:`Relay` takes what the client sends and says what to do (:class:`Step`): the bytes to
send upstream, a statement to hold for approval, whether to pause reading the client, whether
the client said goodbye. It judges and records every statement, replaces refused ones by a
statement that fails at once, and keeps the protocol state (statements, portals, holds, the
session settings that change parsing). Its :attr:`Relay.results` takes what upstream sends and
returns the bytes for the client. The asyncio connection only moves bytes and asks approvers.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import NamedTuple, cast

from airlock.events import EventType
from airlock.gateway.postgres._shared import Shared, cstring
from airlock.gateway.postgres.decode import decode_frontend
from airlock.gateway.postgres.encode import encode_error, encode_message, encode_parse, encode_query
from airlock.gateway.postgres.framing import FRONTEND_TYPES, Frame, Framer
from airlock.gateway.postgres.guard import Verdict
from airlock.gateway.postgres.messages import (
    Bind,
    Close,
    Describe,
    Execute,
    FunctionCall,
    Message,
    Parse,
    PasswordMessage,
    ProtocolError,
)
from airlock.gateway.postgres.parse_state import (
    PARSE_STATE_RULE,
    SessionState,
    depends_on_backslashes,
)
from airlock.gateway.postgres.results import Results
from airlock.policy.guardrails import Decision, SqlStatement

__all__ = ["MAX_BACKLOG", "Held", "Relay", "Step"]

_QUERY, _TERMINATE, _SYNC = b"QXS"
# Frontend messages with nothing to judge or record: Flush, CopyData/Done/Fail.
_CLIENT_PASSED = frozenset(b"Hdcf")
# What a client may send while a statement is held (it is read so that its going away is
# seen); past this, reading pauses until the hold ends.
MAX_BACKLOG = 1024 * 1024
_SEVERITY = {"require_approval": 1, "deny": 2}
_NO_STATEMENT = "\0cursor"  # no statement has this name (names are C strings)


@dataclass(frozen=True)
class Held:
    """A statement waiting for approval, and what is needed to send or refuse it after.

    ``portal`` is set for an extended-protocol Execute: the approval covers that one execution
    of the portal (its statement and parameter values), never a later Bind."""

    verdict: Verdict
    masked: str
    raw: bytes
    parse: Parse | None
    portal: str | None = None


class Step(NamedTuple):
    """What to do after client bytes (or an approval answer): send ``upstream``; then ask for
    approval of ``hold`` (nothing more is sent until :meth:`Relay.decided`); ``pause`` reading
    the client (unused: a held connection's backlog past ``MAX_BACKLOG`` ends it); ``end``: the
    client sent Terminate, or more than ``MAX_BACKLOG`` bytes while a statement was held. (A
    named tuple: one is made per statement; a frozen dataclass costs several times more.)"""

    upstream: bytes = b""
    hold: Held | None = None
    pause: bool = False
    end: bool = False


_NOTHING = Step()


class Relay:
    """The client half of one connection's relay (the upstream half is :attr:`results`)."""

    def __init__(self, shared: Shared, conn_id: str) -> None:
        self.s = shared
        self.conn_id = conn_id
        self.nonce = secrets.token_hex(6)
        self.state = SessionState()
        self.results = Results(shared, conn_id, self.state)
        self.framer = Framer(FRONTEND_TYPES)
        self.statements: dict[str, tuple[str, Verdict]] = {}
        self.portals: dict[str, Bind] = {}
        # A portal runs the statement as it was at its Bind (PostgreSQL keeps the portal's plan
        # when its statement is parsed again or closed): judged by that, never by the name.
        self.bound: dict[str, tuple[str, Verdict]] = {}
        self.rebound: set[str] = set()  # portals whose statement name changed since their Bind
        self.approved_portals: set[str] = set()  # held Executes approved, for that Bind only
        self.sql_prepared: dict[str, SqlStatement] = {}  # SQL PREPARE, for judging EXECUTE
        self.refusal_count = 0
        self.holding: Held | None = None
        self.backlog = b""  # whole messages that came while a statement was held

    def client_data(self, data: bytes) -> Step:
        """Bytes from the client in (any split); what to do out."""
        buf, frames = self.framer.split(data)
        if not frames:
            return _NOTHING
        if self.holding is not None:
            self.backlog += buf[frames[0][1] : frames[-1][2]]
            if len(self.backlog) <= MAX_BACKLOG:
                return _NOTHING
            # Not paused: a client that is not read cannot be seen leaving, and its held
            # statement would be sent for nobody once approved. It is disconnected instead,
            # and the held statement is never sent.
            self.backlog = b""
            self.s.error_event(
                f"the client sent more than {MAX_BACKLOG} bytes while a statement was held for "
                "approval: disconnected, the held statement never sent",
                connection=self.conn_id,
            )
            return Step(end=True)
        return self._pump(buf, frames)

    def decided(self, decision: Decision) -> Step:
        """The approver's answer on the held statement: send it or its refusal, then whatever
        the client sent meanwhile (up to the next hold)."""
        held = self.holding
        assert held is not None, "decided() without a held statement"
        self.holding = None
        if decision.action == "allow":
            if held.portal is not None:
                self.approved_portals.add(held.portal)
            sent = held.raw
        else:
            extended = held.portal is not None
            sent = self._refused(decision, held.verdict, held.parse, asked=True, extended=extended)
        backlog, self.backlog = self.backlog, b""
        if not backlog:
            return Step(upstream=sent)
        after = self._pump(*Framer(FRONTEND_TYPES).split(backlog))
        return Step(sent + after.upstream, after.hold, after.pause, after.end)

    def revoked(self) -> None:
        """The held statement was approved but its ticket ended meanwhile: it is never sent,
        nor anything the client sent after it (the connection ends); recorded as the statement's
        result."""
        assert self.holding is not None, "revoked() without a held statement"
        self.holding = None
        self.backlog = b""
        self.results.result(error=("28000", "ticket revoked while held for approval: never sent"))

    def cancelled(self) -> None:
        """The client went (or the gateway closed) while a statement was held: it is never
        sent; recorded as the statement's result. ``approval.cancelled`` is the approval
        gate's to record (cancelling the task that awaits it), so it is written once."""
        held = self.holding
        if held is None:
            return
        self.holding = None
        self.results.result(error=("57014", "cancelled while held for approval: never sent"))

    # ------------------------------------------------------------------------ client side

    def _pump(self, buf: bytes, frames: list[Frame]) -> Step:
        """Judge, record and forward whole messages: runs that need no change go as they came.
        Stops at a statement held for approval (the messages after it wait in the backlog) and
        at Terminate."""
        pieces: list[bytes] = []
        last = 0
        for kind, start, end in frames:
            if kind in _CLIENT_PASSED:
                continue
            raw = buf[start:end]
            if kind == _QUERY:
                self.results.batches_sent += 1
                forward = self._statement(cstring(raw, "Query"), raw, simple=True)
            elif kind == _SYNC:
                if end - start != 5:
                    raise ProtocolError("Sync message has trailing bytes")
                self.results.batches_sent += 1
                continue
            elif kind == _TERMINATE:
                pieces.append(buf[last:end])
                return Step(upstream=b"".join(pieces), end=True)
            else:
                forward = self._from_client(decode_frontend(raw))
            if forward is raw:
                continue
            pieces.append(buf[last:start])
            last = end
            if isinstance(forward, Held):
                self.holding = forward
                self.backlog = buf[end : frames[-1][2]]
                return Step(upstream=b"".join(pieces), hold=forward)  # those before it go now
            pieces.append(forward)
        done = frames[-1][2]
        if not pieces:
            return Step(upstream=buf if done == len(buf) else buf[:done])
        pieces.append(buf[last:done])
        return Step(upstream=b"".join(pieces))

    def _from_client(self, message: Message) -> bytes | Held:
        """The bytes to send upstream for ``message``, or the statement to hold for approval."""
        if isinstance(message, Parse):
            self.results.described.pop(message.name, None)
            self._statement_changed(message.name)
            verdict = self.s.guard.verdict(message.sql, self.sql_prepared)
            self.statements[message.name] = (message.sql, verdict)
            self.results.name_change_sent("S", message.name, (message.sql, verdict))
            return self._statement(message.sql, message.raw, parse=message, verdict=verdict)
        if isinstance(message, Bind):
            self.portals[message.portal] = message
            self.rebound.discard(message.portal)
            known = self._definition(message.statement)
            if known is None:
                self.bound.pop(message.portal, None)
            else:
                self.bound[message.portal] = known
            self.approved_portals.discard(message.portal)
            self.results.portal_rows.pop(message.portal, None)
        elif isinstance(message, Describe):
            self.results.describe_sent(message.target, message.name)
        elif isinstance(message, Execute):
            return self._execute(message)
        elif isinstance(message, Close):
            (self.statements if message.target == "S" else self.portals).pop(message.name, None)
            self.results.name_change_sent("s" if message.target == "S" else "P", message.name)
            if message.target == "S":
                self._statement_changed(message.name)
            else:
                self.bound.pop(message.name, None)
                self.approved_portals.discard(message.name)
        elif isinstance(message, FunctionCall):
            self.results.batches_sent += 1
            return self._refusal(
                "airlock.function_call",
                "the fastpath function call interface is not allowed through the gateway",
                "call the function in SQL (SELECT f(...)) so guardrails can judge it",
            )
        elif isinstance(message, PasswordMessage):
            raise ProtocolError("unexpected password message after login")
        return message.raw

    def _statement(
        self,
        sql: str,
        raw: bytes,
        *,
        simple: bool = False,
        parse: Parse | None = None,
        verdict: Verdict | None = None,
    ) -> bytes | Held:
        busy = self.results.busy
        verdict = verdict or self.s.guard.verdict(sql, self.sql_prepared)
        for name, prepared in verdict.prepares:
            self.sql_prepared[name] = prepared
        masked = self.s.masker.mask_text(sql)
        if simple:
            seq = self.s.record(
                EventType.DB_QUERY,
                {
                    "gateway": self.s.config.name,
                    "connection": self.conn_id,
                    "protocol": "simple",
                    "sql": masked,
                    "kinds": list(verdict.kinds),
                },
            )
            self.results.query_sent(seq)
        why = self._parse_state(sql, busy)
        if why is not None:
            return self._refused_state(why, masked, parse)
        decision = verdict.final
        if verdict.notable:
            self._record_decisions(verdict, masked)
        if decision.action == "require_approval":
            if parse is not None:  # held at each Execute, with its parameter values
                return raw
            return Held(verdict, masked, raw, parse)
        if decision.action == "allow":
            return raw
        return self._refused(decision, verdict, parse, asked=False)

    def _parse_state(self, sql: str, busy: bool) -> str | None:
        """Why the server may read ``sql`` differently from the gateway now (None: it won't)."""
        why = self.state.refuses(sql)
        if why is None and busy and depends_on_backslashes(sql):
            why = "a statement still running may have changed standard_conforming_strings"
        return why

    def _refused_state(self, why: str, masked: str, parse: Parse | None) -> bytes:
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

    def _refused(
        self,
        decision: Decision,
        verdict: Verdict,
        parse: Parse | None,
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
        parse: Parse | None = None,
        *,
        extended: bool = False,
    ) -> bytes:
        """What goes upstream instead of a refused message: a statement that fails at once
        (its error is swapped for ours on the way back). In place of a Parse, a Parse of the
        same name; in place of an Execute (``extended``), a Parse of a fresh name, which fails
        and so creates nothing; otherwise a Query."""
        self.refusal_count += 1
        token = f"airlock_refused_{self.nonce}_{self.refusal_count}"
        error = encode_error("42501", message, hint=hint, detail=f"rule {rule_id}")
        self.results.refusals[token] = (error, message)
        poison = f'SELECT "{token}"'
        if parse is not None:
            return encode_parse(parse.name, poison)
        if extended:
            return encode_parse(token, poison)
        return encode_query(poison)

    def _execute(self, message: Execute) -> bytes | Held:
        """Record an Execute; hold it when its statement needs approval. One approval covers
        this execution only (its statement and these parameter values): a new Bind asks again."""
        bind = self.portals.get(message.portal)
        known = self.bound.get(message.portal) if bind is not None else None
        if bind is None and self.s.columns.active:
            bind = self._cursor_portal(message.portal)
        sql, verdict = known or ("", self.s.guard.verdict(""))
        masked = self.s.masker.mask_text(sql)
        params = self._params(bind)
        seq = self.s.record(  # the hot events build their one dict (Shared.event copies)
            EventType.DB_QUERY,
            {
                "gateway": self.s.config.name,
                "connection": self.conn_id,
                "protocol": "extended",
                "sql": masked,
                "params": params,
                "kinds": list(verdict.kinds),
            },
        )
        self.results.execute_sent(seq, bind)
        raw = self._describe_first(bind) + message.raw
        if verdict.final.action == "deny":  # a Bind of a name that may hold a refused Parse
            return self._refused(verdict.final, verdict, None, asked=False, extended=True)
        if verdict.final.action != "require_approval" or message.portal in self.approved_portals:
            return raw
        text = f"{masked}\n-- parameters: {json.dumps(params)}" if params else masked
        return Held(verdict, text, raw, None, portal=message.portal)

    def _cursor_portal(self, portal: str) -> Bind:
        """A portal the client never bound: a SQL cursor (``DECLARE``). Its columns are known
        only from a Describe of the portal, asked at every Execute (a cursor name can be
        declared again), so its rows are masked as ``FETCH`` would mask them."""
        self.results.portal_rows.pop(portal, None)
        return Bind(b"", portal, _NO_STATEMENT, (), (), ())

    def _describe_first(self, bind: Bind | None) -> bytes:
        """A Describe of ``bind``'s portal to send before its Execute when the columns of what
        it returns are not known (masking goes by column name); empty when they are."""
        if bind is None or not self.s.columns.active:
            return b""
        if bind.portal not in self.rebound and self.results.columns_known(bind):
            return b""
        self.results.describe_sent("P", bind.portal, ours=True)
        return encode_message(b"D", b"P" + bind.portal.encode() + b"\0")

    def _definition(self, name: str) -> tuple[str, Verdict] | None:
        """What statement ``name`` may hold for a Bind sent now, judged strictest first.

        A Parse earlier in this same batch decides alone (if the server refuses or skips it,
        it skips this Bind too). Otherwise the server holds what it confirmed, any Parse of
        earlier batches still unanswered, or what SQL PREPARE made: every one could be it."""
        confirmed = self.results.statements.get(name)
        if not self.results.changes and name not in self.sql_prepared:
            return cast("tuple[str, Verdict] | None", confirmed)  # the steady state: no doubt
        batch = self.results.batches_sent + 1
        changes = [c for c in self.results.changes if c.name == name and c.target in "Ss"]
        same = [c for c in changes if c.batch == batch]
        if same:
            return cast("tuple[str, Verdict] | None", same[-1].entry)
        # SQL PREPARE / DEALLOCATE change the same names where the gateway does not follow them
        # to the server's answer: a name SQL ever prepared is one more candidate.
        found = [
            confirmed,
            *(c.entry for c in changes if c.entry),
            self._sql_prepared(name),
        ]
        candidates: list[tuple[str, Verdict]] = [c for c in found if c is not None]
        if not candidates:
            return None
        return max(candidates, key=lambda c: _SEVERITY.get(c[1].final.action, 0))

    def _sql_prepared(self, name: str) -> tuple[str, Verdict] | None:
        """A statement made by SQL ``PREPARE``, which shares its namespace with Parse: a Bind
        of it is judged as SQL ``EXECUTE`` of it is (one approval, one execution)."""
        if name not in self.sql_prepared:
            return None
        sql = 'EXECUTE "' + name.replace('"', '""') + '"'
        return sql, self.s.guard.verdict(sql, self.sql_prepared)

    def _statement_changed(self, name: str) -> None:
        """Statement ``name`` is parsed again or closed: the portals bound to it keep the old
        one, so their columns must come from a Describe of the portal, not of the name."""
        self.rebound.update(p for p, bind in self.portals.items() if bind.statement == name)

    def _params(self, bind: Bind | None) -> list[str | None]:
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
