"""The broker's shared state: the issuance ledger, used token ids, witnessed checkpoints, rate
windows. SQLite by default, PostgreSQL by URL; every replica of the broker uses the same store,
so the processes themselves hold nothing that matters.

Secret values are never stored: the ledger keeps a SHA-256 of each credential value, and job
tokens are stored as SHA-256 too.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, OperationalError

from airlock.errors import InfrastructureUnavailable
from airlock.oidc.replay import ReplayCache

__all__ = [
    "Admission",
    "CheckpointRow",
    "JobRow",
    "LeaseRow",
    "SqlReplayCache",
    "StateStore",
    "token_digest",
]

_META = sa.MetaData()

LEASES = sa.Table(
    "airlock_leases",
    _META,
    sa.Column("lease_id", sa.String(64), primary_key=True),
    sa.Column("job_digest", sa.String(64), nullable=False, index=True),
    sa.Column("grant_name", sa.String(128), nullable=False),
    sa.Column("provider", sa.String(128), nullable=False),
    sa.Column("rule_id", sa.String(128), nullable=False),
    sa.Column("issuer", sa.String(128), nullable=False),
    sa.Column("subject", sa.Text, nullable=False),  # JSON: repository, ids, run, actor
    sa.Column("fingerprints", sa.Text, nullable=False),  # JSON: name -> sha256 of the value
    sa.Column("revoke_handle", sa.Text, nullable=False),  # JSON, non-secret
    sa.Column("issued_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
    sa.Column("revoked_at", sa.Float, nullable=True),
    sa.Column("revoke_error", sa.Text, nullable=True),
)

JTIS = sa.Table(
    "airlock_jtis",
    _META,
    sa.Column("issuer", sa.String(128), primary_key=True),
    sa.Column("jti", sa.String(256), primary_key=True),
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
)

JOBS = sa.Table(
    "airlock_jobs",
    _META,
    sa.Column("job_digest", sa.String(64), primary_key=True),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    # The grants this job may still get after its exchange (central-gateway tickets), as the
    # trust policy decided at exchange time: a JSON list. NULL (an older row): none.
    sa.Column("ceiling", sa.Text, nullable=True),
    sa.Column("revoked_at", sa.Float, nullable=True),  # revoke ends the job, not only its leases
    sa.Column("issuer", sa.String(128), nullable=True),
    sa.Column("rule_id", sa.String(128), nullable=True),
)

CHECKPOINTS = sa.Table(
    "airlock_checkpoints",
    _META,
    sa.Column("session_id", sa.String(128), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("head", sa.String(64), nullable=False),
    sa.Column("job_digest", sa.String(64), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("key_id", sa.String(64), nullable=False),
    sa.Column("signature", sa.Text, nullable=False),
)

RATES = sa.Table(
    "airlock_rates",
    _META,
    sa.Column("bucket", sa.String(256), primary_key=True),
    sa.Column("window", sa.Integer, primary_key=True),
    sa.Column("count", sa.Integer, nullable=False),
)


_POOL_SIZE = 16
_POOL_OVERFLOW = 24  # up to 40 connections: anyio's default thread pool
_PURGE_EVERY = 500  # admissions between purges of expired token ids and old rate windows


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class LeaseRow:
    lease_id: str
    grant_name: str
    provider: str
    rule_id: str
    subject: dict[str, Any]
    fingerprints: dict[str, str]
    revoke_handle: dict[str, str]
    issued_at: float
    expires_at: float
    revoked_at: float | None


@dataclass(frozen=True)
class JobRow:
    """A live job: its verified subject and the grants it may still get (tickets)."""

    subject: dict[str, Any]
    ceiling: tuple[str, ...]
    expires_at: float
    issuer: str
    rule_id: str


@dataclass(frozen=True)
class Admission:
    """What :meth:`StateStore.admit` decided, in one transaction."""

    fresh: bool  # the token id had not been used (it is now)
    within_rate: bool  # the request fits the rate window (counted only when fresh)


@dataclass(frozen=True)
class CheckpointRow:
    session_id: str
    seq: int
    head: str
    at: float
    key_id: str
    signature: str


class StateStore:
    """SQL state behind every broker replica."""

    def __init__(self, url: str) -> None:
        self.url = url
        # Enough pooled connections for the thread pool's concurrent requests: a connection over
        # pool_size is closed when returned, and a new PostgreSQL connection costs milliseconds.
        self._engine = sa.create_engine(
            _driver_url(url), pool_pre_ping=True, pool_size=_POOL_SIZE, max_overflow=_POOL_OVERFLOW
        )
        self._uses = 0
        dialect = self._engine.dialect.name
        self._insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        # SQLite has one writer at a time; writers that meet a busy database sleep in its busy
        # handler (1, 2, 5 ... 100 ms). Our writers queue on a lock instead: a thread lock, and
        # for a database file an flock(2) on a file beside it, so that the worker processes of
        # one host queue too. Other writers of the file still meet in the busy handler.
        self._write_lock: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if dialect == "sqlite":
            database = self._engine.url.database or ""
            file_backed = database not in ("", ":memory:") and not database.startswith("file:")
            self._write_lock = _WriterLock(database + "-writer" if file_backed else None)
            sa.event.listen(self._engine, "connect", _sqlite_pragmas)
        # The exchange path's statements, compiled once for this database; they run on the driver
        # connection directly (SQLAlchemy's per-execution machinery cost more than the SQL).
        d = self._engine.dialect
        self._use_jti = _Prepared(
            self._insert(JTIS)
            .on_conflict_do_nothing(index_elements=[JTIS.c.issuer, JTIS.c.jti])
            .returning(JTIS.c.jti),
            d,
            ("issuer", "jti", "expires_at"),
        )
        self._count_rate = _Prepared(
            self._insert(RATES)
            .on_conflict_do_update(
                index_elements=[RATES.c.bucket, RATES.c.window],
                set_={"count": RATES.c.count + 1},
            )
            .returning(RATES.c.count),
            d,
            ("bucket", "window", "count"),
        )
        self._add_job = _Prepared(sa.insert(JOBS), d, [c.name for c in JOBS.columns])
        self._add_leases = _Prepared(
            sa.insert(LEASES), d, list(_lease_values("", "", _EMPTY_LEASE))
        )
        try:
            _META.create_all(self._engine)
            add_missing_columns(self._engine, JOBS)
        except OperationalError as exc:
            raise InfrastructureUnavailable(
                "cannot open the broker's state store",
                hint="check `state:` in the broker config and that the database is reachable",
            ) from exc

    @property
    def engine(self) -> sa.Engine:
        """For other broker tables (approvals) that live in the same database."""
        return self._engine

    def close(self) -> None:
        self._engine.dispose()
        if isinstance(self._write_lock, _WriterLock):
            self._write_lock.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        with self._write_lock, self._engine.begin() as conn:
            yield conn

    @contextlib.contextmanager
    def _write_raw(self) -> Iterator[Any]:
        """A transaction on a pooled driver connection (pre-pinged like any checkout); a driver
        error that means the connection is gone takes it out of the pool."""
        with self._write_lock:
            conn = self._engine.raw_connection()
            cursor = conn.cursor()
            try:
                yield cursor
                conn.commit()
            except BaseException as exc:
                dialect = self._engine.dialect
                gone = isinstance(exc, dialect.loaded_dbapi.Error) and dialect.is_disconnect(
                    exc, conn.dbapi_connection, cursor
                )
                if gone:
                    conn.invalidate(exc)
                else:
                    with contextlib.suppress(Exception):  # the pool's reset-on-return retries
                        conn.rollback()
                raise
            finally:
                with contextlib.suppress(Exception):
                    cursor.close()
                conn.close()

    # -- token ids and rate windows -----------------------------------------------------------

    def consume_jti(self, issuer: str, jti: str, expires_at: float) -> bool:
        """Record a token id as used; True for exactly one caller across every replica."""
        return self.admit(issuer, jti, expires_at).fresh

    def admit(
        self,
        issuer: str,
        jti: str | None,
        jti_expires_at: float,
        *,
        rate: tuple[str, float, int] | None = None,
        now: float | None = None,
    ) -> Admission:
        """Consume ``jti`` (unless None) and, when it was fresh, count one request in the fixed
        window of ``rate`` = (bucket, per_seconds, limit) — one transaction, one round trip each.

        Single use holds across replicas: the insert of (issuer, jti) does nothing when the row
        exists, and of two concurrent inserts the database lets exactly one through."""
        now = time.time() if now is None else now
        self._uses += 1
        if self._uses % _PURGE_EVERY == 1:
            self._purge(now, rate)
        with self._write_raw() as cursor:
            if jti is not None:
                values = {"issuer": issuer, "jti": jti, "expires_at": jti_expires_at}
                cursor.execute(self._use_jti.sql, self._use_jti.params(values))
                if cursor.fetchone() is None:
                    return Admission(fresh=False, within_rate=True)
            if rate is None:
                return Admission(fresh=True, within_rate=True)
            bucket, per_seconds, limit = rate
            values = {"bucket": bucket, "window": int(now // per_seconds), "count": 1}
            cursor.execute(self._count_rate.sql, self._count_rate.params(values))
            (count,) = cursor.fetchone()
        return Admission(fresh=True, within_rate=int(count) <= limit)

    def _purge(self, now: float, rate: tuple[str, float, int] | None) -> None:
        with self._write() as conn:
            conn.execute(sa.delete(JTIS).where(JTIS.c.expires_at < time.time() - 60))
            if rate is not None:
                conn.execute(sa.delete(RATES).where(RATES.c.window < int(now // rate[1]) - 1))

    # -- jobs and leases --------------------------------------------------------------------------

    def add_job(
        self,
        job_digest: str,
        subject: Mapping[str, Any],
        expires_at: float,
        *,
        issuer: str,
        leases: Sequence[LeaseRow] = (),
        ceiling: Sequence[str] = (),
        rule_id: str = "",
    ) -> None:
        """Record a job and its leases in one transaction."""
        job = {
            "job_digest": job_digest,
            "subject": json.dumps(dict(subject), sort_keys=True),
            "created_at": time.time(),
            "expires_at": expires_at,
            "ceiling": json.dumps(list(ceiling)),
            "revoked_at": None,
            "issuer": issuer,
            "rule_id": rule_id,
        }
        rows = [self._add_leases.params(_lease_values(job_digest, issuer, r)) for r in leases]
        with self._write_raw() as cursor:
            cursor.execute(self._add_job.sql, self._add_job.params(job))
            if rows:
                cursor.executemany(self._add_leases.sql, rows)

    def job(self, job_digest: str) -> JobRow | None:
        """The job holding this token digest, or None when unknown, expired or revoked."""
        query = sa.select(JOBS)
        with self._engine.connect() as conn:
            row = conn.execute(query.where(JOBS.c.job_digest == job_digest)).first()
        if row is None or row.revoked_at is not None or row.expires_at < time.time():
            return None
        ceiling = tuple(str(g) for g in json.loads(row.ceiling or "[]"))
        return JobRow(
            json.loads(row.subject), ceiling, row.expires_at, row.issuer or "", row.rule_id or ""
        )

    def job_subject(self, job_digest: str) -> dict[str, Any] | None:
        """The subject of a live job (see :meth:`job`)."""
        job = self.job(job_digest)
        return None if job is None else job.subject

    def revoke_job(self, job_digest: str, now: float) -> bool:
        """End a job: its token gets nothing from now on. False when it was not live."""
        with self._write() as conn:
            result = conn.execute(
                sa.update(JOBS)
                .where(JOBS.c.job_digest == job_digest, JOBS.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
        return result.rowcount == 1

    def was_revoked(self, job_digest: str) -> bool:
        """True when this job was ended by revoke (a second revoke is then a no-op)."""
        query = sa.select(JOBS.c.revoked_at).where(JOBS.c.job_digest == job_digest)
        with self._engine.connect() as conn:
            row = conn.execute(query).first()
        return row is not None and row.revoked_at is not None

    def add_leases(self, job_digest: str, issuer: str, leases: Sequence[LeaseRow]) -> None:
        """Record leases issued to a job after its exchange (tickets)."""
        rows = [self._add_leases.params(_lease_values(job_digest, issuer, r)) for r in leases]
        with self._write_raw() as cursor:
            cursor.executemany(self._add_leases.sql, rows)

    def leases(self, *, job_digest: str | None = None, live_only: bool = False) -> list[LeaseRow]:
        query = sa.select(LEASES)
        if job_digest is not None:
            query = query.where(LEASES.c.job_digest == job_digest)
        if live_only:
            query = query.where(LEASES.c.revoked_at.is_(None))
        with self._engine.connect() as conn:
            return [_lease(r) for r in conn.execute(query.order_by(LEASES.c.issued_at))]

    def expired_unrevoked(self, now: float) -> list[LeaseRow]:
        query = sa.select(LEASES).where(LEASES.c.revoked_at.is_(None), LEASES.c.expires_at <= now)
        with self._engine.connect() as conn:
            return [_lease(r) for r in conn.execute(query)]

    def claim_revocation(self, lease_id: str, now: float) -> bool:
        """Mark a lease revoked; True for exactly one caller (replicas race for the sweep)."""
        with self._write() as conn:
            result = conn.execute(
                sa.update(LEASES)
                .where(LEASES.c.lease_id == lease_id, LEASES.c.revoked_at.is_(None))
                .values(revoked_at=now, revoke_error=None)
            )
        return result.rowcount == 1

    def release_revocation(self, lease_id: str, error: str) -> None:
        """The provider refused: put the lease back so that the sweeper tries again."""
        with self._write() as conn:
            conn.execute(
                sa.update(LEASES)
                .where(LEASES.c.lease_id == lease_id)
                .values(revoked_at=None, revoke_error=error[:500])
            )

    # -- checkpoints ------------------------------------------------------------------------------

    def add_checkpoint(self, job_digest: str, row: CheckpointRow) -> bool:
        """Store a witnessed head; False when this (session, seq) was witnessed already."""
        try:
            with self._write() as conn:
                conn.execute(sa.insert(CHECKPOINTS).values(job_digest=job_digest, **row.__dict__))
        except IntegrityError:
            return False
        return True

    def session_owner(self, session_id: str) -> str | None:
        """The job (token digest) whose checkpoints this session id carries, if any."""
        query = sa.select(CHECKPOINTS.c.job_digest).where(CHECKPOINTS.c.session_id == session_id)
        with self._engine.connect() as conn:
            row = conn.execute(query.limit(1)).first()
        return None if row is None else str(row.job_digest)

    def checkpoints(self, session_id: str) -> list[CheckpointRow]:
        query = (
            sa.select(
                CHECKPOINTS.c.session_id,
                CHECKPOINTS.c.seq,
                CHECKPOINTS.c.head,
                CHECKPOINTS.c.at,
                CHECKPOINTS.c.key_id,
                CHECKPOINTS.c.signature,
            )
            .where(CHECKPOINTS.c.session_id == session_id)
            .order_by(CHECKPOINTS.c.seq)
        )
        with self._engine.connect() as conn:
            return [CheckpointRow(*r) for r in conn.execute(query)]

    # -- rate limits ------------------------------------------------------------------------------

    def hit(self, bucket: str, per_seconds: float, limit: int, now: float) -> bool:
        """Count one request in ``bucket``'s fixed window; False when over ``limit``."""
        return self.admit("", None, 0.0, rate=(bucket, per_seconds, limit), now=now).within_rate


class _WriterLock:
    """A thread lock, then (for ``path``) an exclusive flock(2) on that file: one writer at a
    time across the threads and processes of a host, each waiting its turn in the kernel."""

    def __init__(self, path: str | None) -> None:
        self._lock = threading.Lock()
        self._path = path
        self._fd: int | None = None
        self._pid = 0  # a forked child opens its own file: flock is per open file

    def __enter__(self) -> None:
        self._lock.acquire()
        if self._path is None:
            return
        try:
            if self._fd is None or self._pid != os.getpid():
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                self._pid = os.getpid()
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._lock.release()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._lock.release()

    def close(self) -> None:
        with self._lock:
            if self._fd is not None and self._pid == os.getpid():
                os.close(self._fd)
            self._fd = None


class _Prepared:
    """A statement compiled once for one database: its SQL in the driver's parameter style, and
    how to lay out a call's values (positional drivers take a tuple in the compiled order)."""

    def __init__(self, statement: Any, dialect: sa.Dialect, keys: Sequence[str]) -> None:
        compiled = statement.compile(dialect=dialect, column_keys=list(keys))
        self.sql = str(compiled)
        # The literals (such as the "+ 1"), under the names the compiled SQL uses for them.
        self._defaults = dict(compiled.construct_params(dict.fromkeys(keys)))
        self._order = list(compiled.positiontup or ()) if compiled.positional else None

    def params(self, values: Mapping[str, Any]) -> Any:
        merged = {**self._defaults, **values}
        if self._order is None:
            return merged
        return tuple(merged[key] for key in self._order)


class SqlReplayCache(ReplayCache):
    """Single-use ``jti`` across every replica: a unique key on (issuer, jti)."""

    def __init__(self, store: StateStore) -> None:
        self._store = store

    def consume(self, issuer: str, jti: str, expires_at: float) -> bool:
        return self._store.consume_jti(issuer, jti, expires_at)


_EMPTY_LEASE = LeaseRow("", "", "", "", {}, {}, {}, 0.0, 0.0, None)


def _lease_values(job_digest: str, issuer: str, row: LeaseRow) -> dict[str, Any]:
    return {
        "lease_id": row.lease_id,
        "job_digest": job_digest,
        "grant_name": row.grant_name,
        "provider": row.provider,
        "rule_id": row.rule_id,
        "issuer": issuer,
        "subject": json.dumps(row.subject, sort_keys=True),
        "fingerprints": json.dumps(row.fingerprints, sort_keys=True),
        "revoke_handle": json.dumps(row.revoke_handle, sort_keys=True),
        "issued_at": row.issued_at,
        "expires_at": row.expires_at,
    }


def _lease(row: Any) -> LeaseRow:
    return LeaseRow(
        lease_id=row.lease_id,
        grant_name=row.grant_name,
        provider=row.provider,
        rule_id=row.rule_id,
        subject=json.loads(row.subject),
        fingerprints=json.loads(row.fingerprints),
        revoke_handle=json.loads(row.revoke_handle),
        issued_at=row.issued_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )


def add_missing_columns(engine: sa.Engine, table: sa.Table) -> None:
    """Add the nullable columns of ``table`` that an older database lacks (ALTER TABLE ADD)."""
    present = {c["name"] for c in sa.inspect(engine).get_columns(table.name)}
    missing = [c for c in table.columns if c.name not in present and c.nullable]
    if not missing:
        return
    with engine.begin() as conn:
        for column in missing:
            kind = column.type.compile(dialect=engine.dialect)
            conn.execute(sa.text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))


def _driver_url(url: str) -> str:
    # One vocabulary for users (postgresql://...), the psycopg 3 driver underneath.
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable across app crashes; WAL's usual mode
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()
