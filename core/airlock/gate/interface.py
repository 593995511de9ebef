"""The approval plug point: one abstract backend, one error, one module per implementation.

    AirlockError
     └── InfrastructureUnavailable
          └── GateError        the approval backend cannot ask or answer  → 85 (fail closed)

An :class:`Operation` is what waits for a human: its masked text plus where it comes from
(rule, gateway, repository, commit, run, session). Its :meth:`Operation.operation_hash` binds a
:class:`Decision` to exactly that operation: a decision for another hash is refused. Every
decision is signed with the session's :class:`~airlock.audit.SigningKey` over
``(operation hash, approved, by, at)``, and the events ``approval.requested``,
``approval.decided``, ``approval.expired`` and ``approval.cancelled`` go to the ``record``
callback. An unanswered request expires to a denial (``reason="expired"``); one whose operation
will never run (its client left, the session ended) is cancelled: a denial with the reason.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import json
import re
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from airlock.audit.keys import SigningKey
from airlock.errors import InfrastructureUnavailable
from airlock.events import EventType

__all__ = [
    "CANCELLED",
    "EXPIRED",
    "Answer",
    "ApprovalBackend",
    "ApprovalRequest",
    "Approve",
    "Approver",
    "Decider",
    "Decision",
    "GateError",
    "Operation",
    "OperationKind",
    "Record",
    "approver",
    "ask",
    "format_time",
    "valid_request_id",
]

OperationKind = Literal["sql", "http", "command", "tool"]
Record = Callable[[str, Mapping[str, Any]], object]
Approve = Callable[["Operation"], Awaitable[bool]]
EXPIRED = "expired"
CANCELLED = "cancelled"
_REQUEST_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_GATE_BY = "airlock"


class GateError(InfrastructureUnavailable):
    """The approval backend could not ask for, or read, a decision. Fails closed."""

    default_hint = "check the approval backend (--backend, --dir) and that it is reachable"


def format_time(epoch: float) -> str:
    """RFC 3339 UTC with microseconds, as in the session log."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def valid_request_id(request_id: str) -> bool:
    """True for the ids backends hand out (32 lowercase hex): safe as a file name."""
    return bool(_REQUEST_ID_RE.fullmatch(request_id))


def _same(a: str, b: str) -> bool:
    """Constant-time equality of two strings, whatever characters an attacker put in them."""
    return secrets.compare_digest(a.encode("utf-8", "replace"), b.encode("utf-8", "replace"))


def _canonical(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class Operation:
    """An operation held for approval. ``text`` is already masked: it is shown to humans."""

    kind: OperationKind
    text: str
    rule_id: str
    gateway: str | None = None
    repository: str | None = None
    commit: str | None = None
    run_id: str | None = None
    session_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Exactly the hashed fields, JSON-ready."""
        return asdict(self)

    def operation_hash(self) -> str:
        """SHA-256 (hex) over the canonical JSON of every field: the binding of a decision."""
        return hashlib.sha256(_canonical(self.to_dict())).hexdigest()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Operation:
        """The inverse of :meth:`to_dict`; raises GateError on a malformed mapping."""
        try:
            return cls(**{name: data[name] for name in cls.__dataclass_fields__})
        except (KeyError, TypeError) as exc:
            raise GateError("an approval request file does not describe an operation") from exc


@dataclass(frozen=True)
class ApprovalRequest:
    """One request: an id, the operation, its hash, and when it expires (epoch seconds)."""

    request_id: str
    operation: Operation
    requested_at: float
    expires_at: float | None = None

    @property
    def operation_hash(self) -> str:
        return self.operation.operation_hash()


@dataclass(frozen=True)
class Decision:
    """A decision bound to one operation hash. ``signature`` is base64 Ed25519 by ``key_id``."""

    approved: bool
    by: str
    at: str
    reason: str = ""
    operation_hash: str = ""
    signature: str = field(default="", repr=False)
    key_id: str = ""
    justification: str = ""  # what the approver(s) wrote (masked), when the forge carries text
    by_ids: tuple[str, ...] = ()  # immutable ids of the deciders: "github:583231", "gitlab:42"

    @staticmethod
    def signed_payload(
        operation_hash: str,
        approved: bool,
        by: str,
        at: str,
        justification: str = "",
        by_ids: tuple[str, ...] = (),
    ) -> bytes:
        """The exact bytes signed: canonical JSON of the bound fields (``justification`` and
        ``by_ids`` only when present, so that older decisions verify unchanged)."""
        bound: dict[str, Any] = {
            "approved": approved,
            "at": at,
            "by": by,
            "operation": operation_hash,
        }
        if justification:
            bound["justification"] = justification
        if by_ids:
            bound["by_ids"] = list(by_ids)
        return _canonical(bound)

    @classmethod
    def signed(
        cls,
        key: SigningKey,
        operation_hash: str,
        *,
        approved: bool,
        by: str,
        reason: str = "",
        justification: str = "",
        by_ids: tuple[str, ...] = (),
    ) -> Decision:
        """A decision taken now, signed with ``key``."""
        at = format_time(time.time())
        payload = cls.signed_payload(operation_hash, approved, by, at, justification, by_ids)
        signature = base64.b64encode(key.sign(payload)).decode()
        return cls(
            approved, by, at, reason, operation_hash, signature, key.key_id, justification, by_ids
        )

    def verify(self, public_key: Ed25519PublicKey, operation_hash: str) -> bool:
        """True when the signature checks and the decision is for ``operation_hash``."""
        if not self.signature or not _same(self.operation_hash, operation_hash):
            return False
        payload = self.signed_payload(
            operation_hash, self.approved, self.by, self.at, self.justification, self.by_ids
        )
        try:
            public_key.verify(base64.b64decode(self.signature, validate=True), payload)
        except (InvalidSignature, ValueError):
            return False
        return True

    def to_event(self, request_id: str) -> dict[str, Any]:
        """The ``approval.decided`` event data (``justification``/``by_ids`` when present)."""
        data = {"request_id": request_id, **asdict(self)}
        data["by_ids"] = list(self.by_ids)
        for optional in ("justification", "by_ids"):
            if not data[optional]:
                del data[optional]
        return data


class ApprovalBackend(abc.ABC):
    """Ask for a decision on an operation, and wait for it.

    Subclasses implement :meth:`_submit` (post the request where humans see it) and
    :meth:`_fetch` (the raw answer, if any). The base class keeps the requests, checks the hash
    binding, signs, records the events, and turns a missing answer at the deadline into a
    denial. A request has at most one decision: the first one sticks.
    """

    name: ClassVar[str] = "abstract"
    poll_interval: float = 0.2

    def __init__(self, *, key: SigningKey, record: Record | None = None) -> None:
        self._key = key
        self._record = record
        self._requests: dict[str, ApprovalRequest] = {}
        self._decisions: dict[str, Decision] = {}
        self._lock = threading.Lock()

    @property
    def key_id(self) -> str:
        """The id of the key that signs this backend's decisions."""
        return self._key.key_id

    def request(self, op: Operation, *, timeout: float | None = None) -> str:
        """Ask for approval of ``op``; return the request id. Records ``approval.requested``."""
        now = time.time()
        expires = now + timeout if timeout is not None else None
        req = ApprovalRequest(secrets.token_hex(16), op, now, expires)
        with self._lock:
            self._requests[req.request_id] = req
        self._emit(EventType.APPROVAL_REQUESTED, self._requested_event(req))
        self._submit(req)
        return req.request_id

    def status(self, request_id: str) -> Decision | None:
        """The decision on ``request_id``, or None while nobody has answered."""
        req = self._get(request_id)
        with self._lock:
            if request_id in self._decisions:
                return self._decisions[request_id]
        if req.expires_at is not None and time.time() >= req.expires_at:
            return self._expire(req)
        answer = self._fetch(req)
        return None if answer is None else self._settle(req, answer)

    async def wait(self, request_id: str, timeout: float) -> Decision:
        """Poll until a decision or ``timeout`` seconds; then a denial with reason "expired"."""
        req = self._get(request_id)
        deadline = time.monotonic() + timeout
        while True:
            decision = self.status(req.request_id)
            if decision is not None:
                return decision
            left = deadline - time.monotonic()
            if left <= 0:
                return self._expire(req)
            await asyncio.sleep(min(self.poll_interval, left))

    def cancel(self, request_id: str, reason: str = CANCELLED) -> Decision:
        """The operation will not run (its client left, the session ended): record
        ``approval.cancelled``, a denial with ``reason``. A decision already taken stands, and
        no later answer changes this one."""
        req = self._get(request_id)
        decision = Decision.signed(
            self._key, req.operation_hash, approved=False, by=_GATE_BY, reason=reason
        )
        return self._store(req, decision, EventType.APPROVAL_CANCELLED)

    def close(self) -> None:  # noqa: B027 (optional hook, most backends hold nothing)
        """Release what the backend holds (files, connections)."""

    @abc.abstractmethod
    def _submit(self, req: ApprovalRequest) -> None:
        """Make the request visible to the people who decide."""

    @abc.abstractmethod
    def _fetch(self, req: ApprovalRequest) -> Answer | None:
        """The answer so far, or None."""

    def _get(self, request_id: str) -> ApprovalRequest:
        with self._lock:
            req = self._requests.get(request_id)
        if req is None:
            raise GateError(
                f"unknown approval request {request_id[:40]!r}",
                hint="ask with request() first; ids are valid only in the backend that made them",
            )
        return req

    def _settle(self, req: ApprovalRequest, answer: Answer) -> Decision:
        if not _same(answer.operation_hash, req.operation_hash):
            answer = Answer(
                approved=False,
                by=_GATE_BY,
                reason="refused: the decision was made for another operation",
                operation_hash=req.operation_hash,
            )
        decision = Decision.signed(
            self._key,
            req.operation_hash,
            approved=answer.approved,
            by=answer.by,
            reason=answer.reason,
            justification=answer.justification,
            by_ids=answer.by_ids,
        )
        return self._store(req, decision, EventType.APPROVAL_DECIDED)

    def _expire(self, req: ApprovalRequest) -> Decision:
        decision = Decision.signed(
            self._key, req.operation_hash, approved=False, by=_GATE_BY, reason=EXPIRED
        )
        return self._store(req, decision, EventType.APPROVAL_EXPIRED)

    def _store(self, req: ApprovalRequest, decision: Decision, event: EventType) -> Decision:
        with self._lock:
            existing = self._decisions.get(req.request_id)
            if existing is not None:
                return existing
            self._decisions[req.request_id] = decision
        self._emit(event, decision.to_event(req.request_id))
        return decision

    def _requested_event(self, req: ApprovalRequest) -> dict[str, Any]:
        expires = format_time(req.expires_at) if req.expires_at is not None else None
        return {
            "request_id": req.request_id,
            "backend": self.name,
            "operation_hash": req.operation_hash,
            "operation": req.operation.to_dict(),
            "expires_at": expires,
        }

    def _emit(self, event: EventType, data: Mapping[str, Any]) -> None:
        if self._record is not None:
            self._record(str(event), data)


@dataclass(frozen=True)
class Answer:
    """A raw answer from a backend, before the hash check and the signature."""

    approved: bool
    by: str
    operation_hash: str
    reason: str = ""
    justification: str = ""
    by_ids: tuple[str, ...] = ()


async def ask(backend: ApprovalBackend, op: Operation, timeout: float) -> Decision:
    """Request approval of ``op`` and wait up to ``timeout`` seconds for the decision."""
    request_id = backend.request(op, timeout=timeout)
    return await backend.wait(request_id, timeout)


@runtime_checkable
class Decider(Protocol):
    """An ``approve`` callable that can also say why: :class:`Approver` is one."""

    async def decide(self, op: Operation) -> Decision: ...


class Approver:
    """``await approver(op)`` → bool, and ``await approver.decide(op)`` → the :class:`Decision`
    (whose ``reason`` tells an expiry from a denial). Made by :func:`approver`.

    Cancelling the task that awaits it (``task.cancel("client disconnected")``) cancels the
    request at the backend: ``approval.cancelled`` is recorded with the cancel message as reason.
    """

    def __init__(
        self,
        backend: ApprovalBackend,
        timeout: float,
        *,
        repository: str | None = None,
        commit: str | None = None,
        run_id: str | None = None,
        session_id: str | None = None,
    ) -> None:
        self._backend = backend
        self._timeout = timeout
        self._repository, self._commit, self._run_id = repository, commit, run_id
        self._session_id = session_id

    async def __call__(self, op: Operation) -> bool:
        return (await self.decide(op)).approved

    async def decide(self, op: Operation) -> Decision:
        """Ask for ``op`` (bound to the session's context) and wait for the decision. A backend
        that fails gives an unsigned denial saying so."""
        bound = dataclasses.replace(
            op,
            repository=self._repository,
            commit=self._commit,
            run_id=self._run_id,
            session_id=self._session_id or op.session_id,
        )
        try:
            request_id = self._backend.request(bound, timeout=self._timeout)
        except GateError:
            return _failed(bound)
        try:
            return await self._backend.wait(request_id, self._timeout)
        except GateError:
            return _failed(bound)
        except asyncio.CancelledError as exc:
            why = str(exc.args[0]) if exc.args and exc.args[0] else ""
            reason = f"{CANCELLED}: {why}"[:200] if why else CANCELLED
            with contextlib.suppress(Exception):  # a failing record must not hide the cancel
                self._backend.cancel(request_id, reason)
            raise


def _failed(op: Operation) -> Decision:
    return Decision(
        approved=False,
        by=_GATE_BY,
        at=format_time(time.time()),
        reason="the approval backend failed",
        operation_hash=op.operation_hash(),
    )


def approver(
    backend: ApprovalBackend,
    timeout: float,
    *,
    repository: str | None = None,
    commit: str | None = None,
    run_id: str | None = None,
    session_id: str | None = None,
) -> Approver:
    """The ``approve(op) -> bool`` coroutine the gateways hold operations with.

    Gateways build an :class:`Operation` with what they know (kind, masked text, rule id,
    gateway); this fills in the session's repository, commit, run and session before hashing,
    so that a decision is bound to all of them. Any backend failure counts as a denial. The
    result is an :class:`Approver`: ``decide(op)`` gives the whole decision.
    """
    return Approver(
        backend,
        timeout,
        repository=repository,
        commit=commit,
        run_id=run_id,
        session_id=session_id,
    )
