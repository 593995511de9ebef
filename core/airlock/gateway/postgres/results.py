"""The upstream half of the PostgreSQL relay, sans-I/O: backend bytes in, the bytes for the
client out. Matches answers to what was sent (statements in flight, Describes), records each
statement's result, masks rows, NOTIFY payloads, errors and notices, swaps the errors of refused
statements for the refusal, and follows the settings the server reports."""

from __future__ import annotations

import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from airlock.events import EventType
from airlock.gateway.postgres._shared import RowPlan, Shared, cstring, refusal_token, rows_of
from airlock.gateway.postgres.decode import decode_backend
from airlock.gateway.postgres.encode import encode_data_row, encode_error, encode_message
from airlock.gateway.postgres.framing import BACKEND_TYPES, Frame, Framer
from airlock.gateway.postgres.masking import ColumnPlan
from airlock.gateway.postgres.messages import (
    Bind,
    DataRow,
    EmptyQueryResponse,
    ErrorResponse,
    Message,
    NoticeResponse,
    ParameterStatus,
    ProtocolError,
    Simple,
)
from airlock.gateway.postgres.parse_state import SessionState
from airlock.gateway.postgres.rowpath import join_values, mask_one_column

__all__ = ["Describe", "Inflight", "NameChange", "Results"]

_DATA_ROW, _ROW_DESCRIPTION, _COMMAND_COMPLETE, _READY, _COPY_DATA = b"DTCZd"
# Backend messages passed on without looking inside (the rest are decoded).
_PASSED = frozenset(b"2tKVcGHWvR")
_PARSE_COMPLETE, _CLOSE_COMPLETE = b"13"
_NO_DATA = ord("n")
_PARAMETER_STATUS, _NOTIFICATION = b"SA"


@dataclass(slots=True)
class Inflight:
    """A statement sent upstream whose results are still coming."""

    query_seq: object
    started: float
    batch: int
    simple: bool
    rows: int = 0
    bind: Bind | None = None  # an Execute's: its portal, statement and result formats
    planned: bool = False


@dataclass(frozen=True)
class Describe:
    """A Describe sent upstream whose RowDescription / NoData is still to come."""

    batch: int
    target: str  # "S" | "P"
    name: str
    ours: bool = False  # sent by the gateway to learn the columns: its answer is not relayed


@dataclass(frozen=True)
class NameChange:
    """A Parse or Close sent upstream, not yet answered: what the server's statement names hold
    changes only when it answers ParseComplete / CloseComplete (a Parse it refuses, or skips
    after an error earlier in the batch, changes nothing)."""

    batch: int
    target: str  # "S": a Parse; "s": a Close of a statement; "P": a Close of a portal
    name: str
    entry: Any = None  # a Parse's (sql, verdict)


class Results:
    """What comes back from upstream, for one connection."""

    def __init__(self, shared: Shared, conn_id: str, state: SessionState) -> None:
        self.s = shared
        self.conn_id = conn_id
        self.state = state
        self.framer = Framer(BACKEND_TYPES)
        self.inflight: deque[Inflight] = deque()
        self.describes: deque[Describe] = deque()
        self.described: dict[str, bytes | None] = {}  # statement -> RowDescription (or NoData)
        self.portal_rows: dict[str, bytes | None] = {}  # portal -> RowDescription (or NoData)
        self.refusals: dict[str, tuple[bytes, str]] = {}  # token -> (our error, its message)
        self.changes: deque[NameChange] = deque()  # Parses and Closes not yet answered
        self.statements: dict[str, Any] = {}  # what the server's statement names hold, confirmed
        self.batches_sent = 0  # Syncs and Queries sent (the client half counts them)
        self.batches_done = 0  # ReadyForQuery seen
        self.tx_status = "I"
        self.column_plan: ColumnPlan | None = None
        self.text_columns: tuple[bool, ...] = ()
        self.nulled: tuple[str, ...] = ()  # masked columns sent as NULL in this result
        self.noticed = False  # the client was told about them

    def feed(self, data: bytes) -> bytes:
        """Backend bytes in, the bytes for the client out (whole messages; the rest waits).
        Runs of messages that need no change go as they came; only changed messages (masked
        rows, swapped errors) are re-encoded."""
        buf, frames = self.framer.split(data)
        return self._rewrite(buf, frames) if frames else b""

    # -------------------------------------------------------- what the client half tells us

    def query_sent(self, seq: object) -> None:
        self.inflight.append(Inflight(seq, time.monotonic(), self.batches_sent, True))

    def execute_sent(self, seq: object, bind: Bind | None) -> None:
        self.inflight.append(
            Inflight(seq, time.monotonic(), self.batches_sent + 1, False, bind=bind)
        )

    def name_change_sent(self, target: str, name: str, entry: Any = None) -> None:
        self.changes.append(NameChange(self.batches_sent + 1, target, name, entry))

    def describe_sent(self, target: str, name: str, *, ours: bool = False) -> None:
        self.describes.append(Describe(self.batches_sent + 1, target, name, ours))

    def columns_known(self, bind: Bind) -> bool:
        """Whether the columns of ``bind``'s results are (or are about to be) known."""
        if bind.portal in self.portal_rows or bind.statement in self.described:
            return True
        return any(
            (d.target == "P" and d.name == bind.portal)
            or (d.target == "S" and d.name == bind.statement)
            for d in self.describes
        )

    @property
    def busy(self) -> bool:
        """Something is running whose effects (a changed setting) may not be seen yet."""
        return bool(self.inflight)

    # ------------------------------------------------------------------------ the stream

    def _rewrite(self, buf: bytes, frames: list[Frame]) -> bytes:
        pieces: list[bytes] = []
        last = 0
        index, count = 0, len(frames)
        while index < count:
            kind, start, end = frames[index]
            index += 1
            if kind == _DATA_ROW:  # a run of rows is handled at once
                first = index - 1
                while index < count and frames[index][0] == _DATA_ROW:
                    index += 1
                end = frames[index - 1][2]
                new = self._rows(buf, frames[first:index])
            elif kind == _COMMAND_COMPLETE:  # every statement's end: tested first
                self.result(tag=cstring(buf[start:end], "CommandComplete"))
                self.column_plan = None
                continue
            elif kind == _READY:
                if end - start != 6:
                    raise ProtocolError("ReadyForQuery message has a bad length")
                self.tx_status = chr(buf[start + 5])
                self._ready()
                continue
            elif kind in _PASSED:
                continue
            elif kind in (_PARSE_COMPLETE, _CLOSE_COMPLETE):
                self._acknowledged(kind == _PARSE_COMPLETE)
                continue
            elif kind == _NOTIFICATION:
                new = self._notification(buf, start, end)
            elif kind == _PARAMETER_STATUS:
                status = decode_backend(buf[start:end])
                assert isinstance(status, ParameterStatus)
                self.state.update(status.name, status.value)
                continue
            elif kind == _COPY_DATA:
                new = self._copy_data(buf, start, end)
            elif kind in (_ROW_DESCRIPTION, _NO_DATA):
                new = self._description(buf[start:end], kind == _NO_DATA)
                if new is None:
                    continue
            else:
                new = self._from_upstream(decode_backend(buf[start:end]))
            if new is not None:
                pieces += (buf[last:start], new)
                last = end
        done = frames[-1][2]
        if not pieces:
            return buf if done == len(buf) else buf[:done]
        pieces.append(buf[last:done])
        return b"".join(pieces)

    def _acknowledged(self, parse: bool) -> None:
        """ParseComplete / CloseComplete: the oldest Parse (or Close) sent took effect."""
        while self.changes:
            change = self.changes.popleft()
            if (change.target == "S") != parse:
                continue  # answers come in order; a mismatch is skipped, never applied
            if change.target == "S":
                self.statements[change.name] = change.entry
            elif change.target == "s":
                self.statements.pop(change.name, None)
            return

    def _from_upstream(self, message: Message) -> bytes | None:
        """The bytes that replace ``message`` on the way to the client; None: unchanged.

        RowDescription, DataRow, CommandComplete and ReadyForQuery take the fast paths in
        :meth:`_rewrite` and never come here."""
        if isinstance(message, EmptyQueryResponse):
            self.result(tag="")
        elif isinstance(message, ErrorResponse):
            return self._error(message)
        elif isinstance(message, NoticeResponse):
            return self._changed(message)
        elif isinstance(message, Simple) and message.type == "s":
            self.result(tag="(suspended)")
        return None

    def _description(self, raw: bytes, no_data: bool) -> bytes | None:
        """RowDescription / NoData: a simple Query's columns, or the answer to the oldest
        Describe (kept for the Executes to come). b"": ours, not relayed; None: unchanged."""
        head = self.inflight[0] if self.inflight else None
        if (head is not None and head.simple) or not self.describes:
            if not no_data:
                self._use(self.s.row_plan(raw))
            return None
        describe = self.describes.popleft()
        (self.described if describe.target == "S" else self.portal_rows)[describe.name] = (
            None if no_data else raw
        )
        return b"" if describe.ours else None

    def _plan_execute(self, head: Inflight) -> None:
        """The masking plan for the rows of Execute ``head``: its portal's columns in the
        formats its Bind asked for."""
        head.planned = True
        bind = head.bind
        if bind is None:
            return
        raw = self.portal_rows.get(bind.portal)
        if raw is not None:  # a described portal: the RowDescription carries the formats
            self._use(self.s.row_plan(raw))
            return
        raw = self.described.get(bind.statement)
        if raw is not None:
            self._use(self.s.row_plan(raw, bind.result_formats))

    def _use(self, plan: RowPlan) -> None:
        self.column_plan, self.text_columns, nulled = plan
        self.nulled = nulled
        self.noticed = False

    def _rows(self, buf: bytes, run: list[Frame]) -> bytes | None:
        """A run of DataRows: the bytes replacing them, None when unchanged. One masker scan
        covers the whole run; only when it finds something is each row looked at alone."""
        head = self.inflight[0] if self.inflight else None
        if head is not None:
            head.rows += len(run)
            if not head.planned and not head.simple:
                self._plan_execute(head)
        plan = self.column_plan
        if self.s.config.mask_values and _has_secret(self.s.masker.mask_bytes, buf, run):
            rows = [self._data_row(buf, s, e) or buf[s:e] for _, s, e in run]
        elif plan is None:
            return None
        else:
            rows = _mask_columns(buf, run, _encoded_plan(plan))
        if self.nulled and not self.noticed:
            self.noticed = True
            rows.insert(0, self._null_notice())
        return b"".join(rows)

    def _null_notice(self) -> bytes:
        """Masked columns of a type with no masked value come back NULL: never silently."""
        names = ", ".join(self.nulled)
        return encode_error(
            "01000",
            f"Airlock gateway {self.s.config.name}: masked column(s) {names} sent as NULL",
            hint="their type has no value that can say 'masked' (see docs/gateways.md)",
            severity="NOTICE",
            notice=True,
        )

    def _data_row(self, buf: bytes, start: int, end: int) -> bytes | None:
        plan = self.column_plan
        mask_values = self.s.config.mask_values
        raw = buf[start:end]
        row = decode_backend(raw)
        assert isinstance(row, DataRow)
        values = list(row.values)
        changed = False
        if plan is not None:
            for i, (masked, replacement) in enumerate(plan):
                if masked and i < len(values) and values[i] is not None:
                    values[i] = replacement
                    changed = True
        if mask_values:
            changed |= self._mask_values(values)
        return encode_data_row(values) if changed else None

    def _copy_data(self, buf: bytes, start: int, end: int) -> bytes | None:
        """COPY ... TO STDOUT data (one row per message): value masking only, as the COPY
        stream names no columns."""
        if not self.s.config.mask_values:
            return None
        data = buf[start + 5 : end]
        masked = self.s.masker.mask_bytes(data)
        return None if masked == data else encode_message(b"d", masked)

    def _notification(self, buf: bytes, start: int, end: int) -> bytes | None:
        """NOTIFY channel and payload, masked (always: they are free text like an error)."""
        body = buf[start + 5 : end]
        masked = self.s.masker.mask_bytes(body[4:])
        if masked == body[4:]:
            return None
        return encode_message(b"A", body[:4] + masked)

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

    def _error(self, message: ErrorResponse) -> bytes | None:
        head = self.inflight[0] if self.inflight else None
        if head is None or not head.simple:  # the server skips to Sync: no more answers
            batch = self.batches_done + 1
            self.describes = deque(d for d in self.describes if d.batch != batch)
            self.changes = deque(c for c in self.changes if c.batch != batch)
        token = refusal_token(message.message)
        replacement = self.refusals.pop(token, None) if token else None
        if replacement is not None:
            self.result(error=("42501", replacement[1]))
            return replacement[0]
        masked = self._changed(message)
        if message.fields.get("V", message.fields.get("S")) in ("FATAL", "PANIC"):
            self.s.error_event(
                f"upstream ended the session ({message.sqlstate})", connection=self.conn_id
            )
        self.result(error=(message.sqlstate, self.s.masker.mask_text(message.message)))
        return masked

    def masked_error(self, message: ErrorResponse | NoticeResponse) -> bytes:
        """``message`` with its fields masked."""
        return self._changed(message) or message.raw

    def _changed(self, message: ErrorResponse | NoticeResponse) -> bytes | None:
        """``message`` with its fields masked; None when nothing needed masking."""
        masker = self.s.masker
        fields = {k: masker.mask_text(v) for k, v in message.fields.items()}
        if fields == dict(message.fields):
            return None
        body = b"".join(k.encode() + v.encode() + b"\0" for k, v in fields.items()) + b"\0"
        return encode_message(message.raw[:1], body)

    def result(self, *, tag: str | None = None, error: tuple[str, str] | None = None) -> None:
        head = self.inflight[0] if self.inflight else None
        if head is None:
            return
        now = time.monotonic()
        data: dict[str, Any] = {
            "gateway": self.s.config.name,
            "connection": self.conn_id,
            "query": head.query_seq if isinstance(head.query_seq, int) else None,
            "rows": rows_of(tag, head.rows),
            "duration_ms": round((now - head.started) * 1000, 3),
        }
        if tag is not None:
            data["tag"] = tag
        if error is not None:
            data["error"] = {"sqlstate": error[0], "message": error[1]}
        self.s.record(EventType.DB_RESULT, data)
        head.rows = 0
        head.started = now
        if not head.simple:  # a simple Query ends at ReadyForQuery, after all its statements
            self.inflight.popleft()

    def _ready(self) -> None:
        self.batches_done += 1
        while self.describes and self.describes[0].batch <= self.batches_done:
            self.describes.popleft()
        while self.inflight and self.inflight[0].batch <= self.batches_done:
            self.inflight.popleft()
        while self.changes and self.changes[0].batch <= self.batches_done:
            self.changes.popleft()
        if self.batches_done >= self.batches_sent:
            self.refusals.clear()  # refusals skipped by an earlier error never come back


_NULL = b"\xff\xff\xff\xff"


def _encoded_plan(plan: ColumnPlan) -> tuple[bytes | None, ...]:
    """Per column: the masked value with its length prefix, or None to keep the column."""
    return tuple(
        (_NULL if value is None else len(value).to_bytes(4, "big") + value) if masked else None
        for masked, value in plan
    )


_LENGTH = struct.Struct("!i")


def _has_secret(mask: Callable[[bytes], bytes], buf: bytes, run: list[Frame]) -> bool:
    """Whether any value of the DataRows in ``run`` holds something the masker masks: one scan
    over the values joined by NUL. (Not over the raw rows: a length byte that is a letter
    before a value, or the next row's ``D`` after it, would hide a token from ``\\b``.)"""
    joined = join_values(buf, run)
    return mask(joined) is not joined


def _mask_columns(buf: bytes, run: list[Frame], plan: tuple[bytes | None, ...]) -> list[bytes]:
    """The DataRows of ``run`` with the columns ``plan`` masks replaced (NULLs stay NULL),
    walking the length prefixes only up to the last masked column. (The per-row loop of the
    1M-row case: kept flat on purpose.)"""
    masked = [(i, r) for i, r in enumerate(plan) if r is not None]
    last = masked[-1][0]
    unpack, pack = _LENGTH.unpack_from, _LENGTH.pack
    if len(masked) == 1:
        return [mask_one_column(buf, run, *masked[0])]
    out: list[bytes] = []
    append = out.append
    try:
        for _, start, end in run:
            if int.from_bytes(buf[start + 5 : start + 7], "big") <= last:
                raise ProtocolError("a DataRow has fewer columns than its RowDescription")
            pos = copied = start + 7
            column = delta = 0
            pieces: list[bytes] = []
            for index, replacement in masked:
                while column < index:
                    size = unpack(buf, pos)[0]
                    pos += 4 + size if size > 0 else 4
                    column += 1
                size = unpack(buf, pos)[0]
                after = pos + 4 + size if size > 0 else pos + 4
                if size >= 0:
                    pieces += (buf[copied:pos], replacement)
                    delta += len(replacement) - (after - pos)
                    copied = after
                pos = after
                column += 1
            if pos > end:
                raise ProtocolError("a DataRow is shorter than its columns say")
            append(b"D" + pack(end - start - 1 + delta) + buf[start + 5 : start + 7])
            out += pieces
            append(buf[copied:end])
    except struct.error:  # a length prefix that points past the buffer
        raise ProtocolError("a DataRow is shorter than its columns say") from None
    return out
