"""Approval requests, votes and webhook deliveries in the broker's database."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from airlock.broker.state import JOBS, add_missing_columns
from airlock.gate.interface import Decision, format_time
from airlock.gate.rules import ApproverRules

__all__ = [
    "APPROVALS",
    "DELIVERIES",
    "PENDING",
    "VOTES",
    "ApprovalRow",
    "ApprovalStore",
    "Replayed",
    "Tally",
    "Vote",
]

_META = sa.MetaData()

APPROVALS = sa.Table(
    "airlock_approvals",
    _META,
    sa.Column("request_id", sa.String(32), primary_key=True),
    sa.Column("job_digest", sa.String(64), nullable=False, index=True),
    sa.Column("backend", sa.String(32), nullable=False),
    sa.Column("repository", sa.String(256), nullable=False),
    sa.Column("repository_id", sa.String(64), nullable=False),
    sa.Column("run_id", sa.String(64), nullable=True, index=True),
    sa.Column("target", sa.Integer, nullable=True),  # pull request number / merge request iid
    sa.Column("requester", sa.String(256), nullable=True),
    sa.Column("author", sa.String(256), nullable=True),
    sa.Column("operation", sa.Text, nullable=False),  # JSON, masked text
    sa.Column("operation_hash", sa.String(64), nullable=False),
    sa.Column("rules", sa.Text, nullable=False),  # JSON list of approver rule sets
    sa.Column("forge_ref", sa.String(64), nullable=True),  # check run id / note id
    sa.Column("url", sa.Text, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("decided_by", sa.String(256), nullable=True),
    sa.Column("decided_at", sa.String(40), nullable=True),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("signature", sa.Text, nullable=True),
    sa.Column("key_id", sa.String(64), nullable=True),
    # Added later (nullable, so older databases gain them in place):
    sa.Column("requester_id", sa.String(64), nullable=True),  # GitHub actor_id / GitLab user_id
    sa.Column("head_sha", sa.String(64), nullable=True),  # the PR head the check run is on
    sa.Column("justification", sa.Text, nullable=True),  # masked, what the approvers wrote
    sa.Column("decided_by_ids", sa.Text, nullable=True),  # JSON list: "github:583231", …
)

DELIVERIES = sa.Table(
    "airlock_webhook_deliveries",
    _META,
    sa.Column("source", sa.String(32), primary_key=True),
    sa.Column("delivery_id", sa.String(160), primary_key=True),
    sa.Column("received_at", sa.Float, nullable=False),
)

VOTES = sa.Table(
    "airlock_approval_votes",
    _META,
    sa.Column("request_id", sa.String(32), primary_key=True),
    # The approver's immutable id ("github:583231"): one vote per person, whatever their login.
    sa.Column("login", sa.String(256), primary_key=True),
    sa.Column("by", sa.String(300), nullable=False),  # forge:login, as shown
    sa.Column("justification", sa.Text, nullable=True),  # masked, at most 1,000 characters
    sa.Column("voted_at", sa.Float, nullable=False),
)

PENDING = "pending"


# -- rows -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApprovalRow:
    """One approval request as the broker keeps it."""

    request_id: str
    job_digest: str
    backend: str
    repository: str
    repository_id: str
    run_id: str | None
    target: int | None
    requester: str | None
    author: str | None
    operation: dict[str, Any]
    operation_hash: str
    rules: list[dict[str, Any]]
    forge_ref: str | None
    url: str | None
    created_at: float
    expires_at: float
    status: str
    decided_by: str | None
    decided_at: str | None
    reason: str | None
    signature: str | None
    key_id: str | None
    requester_id: str | None = None
    head_sha: str | None = None
    justification: str | None = None
    decided_by_ids: list[str] | None = None

    def public(self) -> dict[str, Any]:
        """What the waiting job gets: the status and, once decided, the signed decision."""
        out: dict[str, Any] = {
            "request_id": self.request_id,
            "status": self.status,
            "operation_hash": self.operation_hash,
            "expires_at": format_time(self.expires_at),
            "url": self.url,
        }
        if self.status != PENDING:
            out.update(
                by=self.decided_by,
                at=self.decided_at,
                reason=self.reason or "",
                signature=self.signature,
                key_id=self.key_id,
            )
            if self.justification:
                out["justification"] = self.justification
            if self.decided_by_ids:
                out["by_ids"] = list(self.decided_by_ids)
        return out

    def approver_rules(self) -> list[ApproverRules]:
        return [ApproverRules.from_dict(r) for r in self.rules]


class Replayed(Exception):
    """This delivery id (or note) was seen before."""


@dataclass(frozen=True)
class Vote:
    """One entitled approval of a request: ``approver_id`` is the forge's immutable id."""

    approver_id: str
    by: str
    justification: str = ""


@dataclass(frozen=True)
class Tally:
    """What an approval did: ``counted`` (a new vote), the votes so far, the decision if any."""

    status: str  # "pending", "approved", "already-decided" or "revoked" (the job was)
    votes: tuple[Vote, ...]
    counted: bool
    decision: Decision | None = None


class ApprovalStore:
    """The approvals tables, on the broker's state database."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        _META.create_all(engine)
        add_missing_columns(engine, APPROVALS)

    def add(self, row: ApprovalRow) -> None:
        values = dict(row.__dict__)
        values["operation"] = json.dumps(row.operation, sort_keys=True)
        values["rules"] = json.dumps(row.rules, sort_keys=True)
        values["decided_by_ids"] = json.dumps(row.decided_by_ids or [])
        with self._engine.begin() as conn:
            conn.execute(sa.insert(APPROVALS).values(**values))

    def get(self, request_id: str) -> ApprovalRow | None:
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(APPROVALS).where(APPROVALS.c.request_id == request_id)
            ).first()
        return None if row is None else _row(row)

    def set_forge(
        self,
        request_id: str,
        forge_ref: str,
        url: str | None,
        head_sha: str | None = None,
        author: str | None = None,
    ) -> None:
        """Where the forge shows the request (and the head and author it reported)."""
        with self._engine.begin() as conn:
            conn.execute(
                sa.update(APPROVALS)
                .where(APPROVALS.c.request_id == request_id)
                .values(forge_ref=forge_ref, url=url, head_sha=head_sha, author=author)
            )

    def pending_of_job(self, job_digest: str) -> list[ApprovalRow]:
        """The job's requests still waiting for an answer."""
        query = sa.select(APPROVALS).where(
            APPROVALS.c.job_digest == job_digest, APPROVALS.c.status == PENDING
        )
        with self._engine.connect() as conn:
            return [_row(r) for r in conn.execute(query)]

    def pending_plans(self, repository_id: str, run_id: str) -> list[ApprovalRow]:
        query = sa.select(APPROVALS).where(
            APPROVALS.c.backend == "github-environment",
            APPROVALS.c.repository_id == repository_id,
            APPROVALS.c.run_id == run_id,
            APPROVALS.c.status == PENDING,
        )
        with self._engine.connect() as conn:
            return [_row(r) for r in conn.execute(query)]

    def decide(
        self, request_id: str, status: str, decision: Decision, deliveries: list[tuple[str, str]]
    ) -> bool:
        """Consume ``deliveries`` and settle a pending request, in one transaction.

        True when this call decided; False when it was already decided. Raises
        :class:`Replayed` (and changes nothing) when a delivery was seen before.
        """
        try:
            with self._engine.begin() as conn:
                _insert_deliveries(conn, deliveries)
                result = conn.execute(
                    sa.update(APPROVALS)
                    .where(APPROVALS.c.request_id == request_id, APPROVALS.c.status == PENDING)
                    .values(
                        status=status,
                        decided_by=decision.by,
                        decided_at=decision.at,
                        reason=decision.reason,
                        signature=decision.signature,
                        key_id=decision.key_id,
                        **_decided(decision),
                    )
                )
        except IntegrityError:
            raise Replayed from None
        return bool(result.rowcount == 1)

    def vote(
        self,
        request_id: str,
        vote: Vote,
        needed: int,
        sign: Callable[[tuple[Vote, ...]], Decision],
        deliveries: list[tuple[str, str]],
    ) -> Tally:
        """Consume ``deliveries``, count ``vote`` once, and approve when ``needed`` are in.

        One transaction, holding the request row's lock (``SELECT … FOR UPDATE``; SQLite
        serialises writers anyway), so racing votes see each other and exactly one settles.
        Raises :class:`Replayed` (and changes nothing) when a delivery was seen before.
        """
        try:
            with self._engine.begin() as conn:
                _insert_deliveries(conn, deliveries)
                return _tally(conn, request_id, vote, needed, sign)
        except IntegrityError:
            raise Replayed from None

    def drop_vote(self, request_id: str, approver_id: str) -> None:
        """Forget one approval (its approver lost the right to give it)."""
        with self._engine.begin() as conn:
            conn.execute(
                sa.delete(VOTES).where(
                    VOTES.c.request_id == request_id, VOTES.c.login == approver_id
                )
            )

    def votes(self, request_id: str) -> tuple[Vote, ...]:
        """The approvals counted so far, by login."""
        with self._engine.connect() as conn:
            return _votes(conn, request_id)

    def consume(self, deliveries: list[tuple[str, str]]) -> None:
        """Record deliveries that decide nothing (refused clicks); :class:`Replayed` if seen."""
        try:
            with self._engine.begin() as conn:
                _insert_deliveries(conn, deliveries)
        except IntegrityError:
            raise Replayed from None

    def release(self, deliveries: list[tuple[str, str]]) -> None:
        """Forget deliveries whose effect could not be completed, so a redelivery may retry."""
        with self._engine.begin() as conn:
            for source, delivery in deliveries:
                conn.execute(
                    sa.delete(DELIVERIES).where(
                        DELIVERIES.c.source == source, DELIVERIES.c.delivery_id == delivery
                    )
                )


def _insert_deliveries(conn: sa.Connection, deliveries: list[tuple[str, str]]) -> None:
    for source, delivery in deliveries:
        conn.execute(
            sa.insert(DELIVERIES).values(
                source=source, delivery_id=delivery, received_at=time.time()
            )
        )


def _tally(
    conn: sa.Connection,
    request_id: str,
    vote: Vote,
    needed: int,
    sign: Callable[[tuple[Vote, ...]], Decision],
) -> Tally:
    locked = sa.select(APPROVALS.c.status, APPROVALS.c.job_digest).where(
        APPROVALS.c.request_id == request_id
    )
    row = conn.execute(locked.with_for_update()).first()
    if row is None or row.status != PENDING:
        return Tally("already-decided", (), False)
    if _job_revoked(conn, row.job_digest):
        return Tally("revoked", (), False)
    mine = sa.select(VOTES.c.login).where(
        VOTES.c.request_id == request_id, VOTES.c.login == vote.approver_id
    )
    counted = conn.execute(mine).first() is None
    if counted:
        conn.execute(
            sa.insert(VOTES).values(
                request_id=request_id,
                login=vote.approver_id,
                by=vote.by,
                justification=vote.justification or None,
                voted_at=time.time(),
            )
        )
    votes = _votes(conn, request_id)
    if len(votes) < needed:
        return Tally(PENDING, votes, counted)
    decision = sign(votes)
    conn.execute(
        sa.update(APPROVALS)
        .where(APPROVALS.c.request_id == request_id, APPROVALS.c.status == PENDING)
        .values(
            status="approved",
            decided_by=decision.by,
            decided_at=decision.at,
            reason=decision.reason,
            signature=decision.signature,
            key_id=decision.key_id,
            **_decided(decision),
        )
    )
    return Tally("approved", votes, counted, decision)


def _job_revoked(conn: sa.Connection, job_digest: str) -> bool:
    """True when the job that asked was revoked. Locks the job's row (``FOR UPDATE``), so a
    revoke racing this vote waits for it, or this vote sees the revoke: never both."""
    query = sa.select(JOBS.c.revoked_at).where(JOBS.c.job_digest == job_digest)
    job = conn.execute(query.with_for_update()).first()
    return job is not None and job.revoked_at is not None


def _decided(decision: Decision) -> dict[str, Any]:
    return {
        "justification": decision.justification or None,
        "decided_by_ids": json.dumps(list(decision.by_ids)),
    }


def _votes(conn: sa.Connection, request_id: str) -> tuple[Vote, ...]:
    query = sa.select(VOTES).where(VOTES.c.request_id == request_id).order_by(VOTES.c.login)
    return tuple(Vote(r.login, r.by, r.justification or "") for r in conn.execute(query))


def _row(row: Any) -> ApprovalRow:
    data = dict(row._mapping)
    data["operation"] = json.loads(data["operation"])
    data["rules"] = json.loads(data["rules"])
    data["decided_by_ids"] = json.loads(data.get("decided_by_ids") or "[]")
    return ApprovalRow(**data)
