"""PostgreSQL: one ephemeral login role per lease, ``airlock_<lease>``.

Issue creates the role with ``LOGIN``, a random password, ``VALID UNTIL now()+ttl`` and a
connection limit, and grants it the grant's roles, in one transaction (nothing half-created).
The password is sent already SCRAM-hashed, so it never appears in statement text or server logs.
Roles that carry SUPERUSER, CREATEROLE, REPLICATION or BYPASSRLS are never granted (membership
would allow ``SET ROLE`` to them), nor predefined ``pg_*`` roles unless the allowlist names them.

Revoke: ``NOLOGIN``, terminate the role's backends, ``REASSIGN OWNED`` to the admin (or
``reassign_to``), ``DROP OWNED``, ``DROP ROLE``. :meth:`PostgresProvider.sweep` drops expired
``airlock_%`` roles that were never revoked. Objects are reassigned in the provider's database
only (PostgreSQL's ``REASSIGN OWNED`` is per database).
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, ClassVar
from urllib.parse import quote, urlencode

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from airlock.errors import ConfigError
from airlock.providers.interface import (
    CredentialProvider,
    IssuedCredential,
    IssueRequest,
    ProviderError,
    TtlLimits,
    clamp_ttl,
)
from airlock.providers.secrets import redact, resolve_secret

__all__ = ["ROLE_PREFIX", "PostgresConfig", "PostgresGrant", "PostgresProvider", "role_for_lease"]

log = logging.getLogger(__name__)

ROLE_PREFIX = "airlock_"
_LEASE_RE = re.compile(r"^[a-z0-9_]{1,50}$")
_ROLE_ATTRS_QUERY = (
    "SELECT rolname, rolsuper, rolcreaterole, rolreplication, rolbypassrls "
    "FROM pg_roles WHERE rolname = ANY(%s)"
)
_TERMINATE_WAIT_S = 5.0

RoleName = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[^\x00]+$")]


class PostgresConfig(BaseModel):
    """A ``providers:`` entry. ``admin_dsn`` may be ``env:NAME`` or ``file:PATH``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    admin_dsn: SecretStr
    host: str = Field(min_length=1, description="host the job connects to")
    port: int = Field(default=5432, ge=1, le=65535)
    database: str | None = Field(default=None, description="default: the admin DSN's dbname")
    allowed_roles: list[RoleName] | None = None
    reassign_to: RoleName | None = None
    sslmode: str | None = None
    connect_timeout: int = Field(default=5, ge=1, le=60)


class PostgresGrant(BaseModel):
    """A grant: the roles the ephemeral role is made a member of."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    roles: list[RoleName] = Field(min_length=1)
    connection_limit: int = Field(default=2, ge=1, le=100)


def role_for_lease(lease_id: str) -> str:
    """``airlock_<lease>``; the lease id must be lower-case letters, digits or ``_``."""
    if not _LEASE_RE.match(lease_id):
        raise ConfigError(f"lease id {lease_id!r} is not usable in a role name ([a-z0-9_]{{1,50}})")
    return ROLE_PREFIX + lease_id


class PostgresProvider(CredentialProvider):
    """Ephemeral PostgreSQL roles."""

    name: ClassVar[str] = "postgres"
    settings_model: ClassVar[type[BaseModel]] = PostgresGrant
    config_model: ClassVar[type[BaseModel]] = PostgresConfig
    ttl_limits: ClassVar[TtlLimits] = TtlLimits(minimum=60, maximum=24 * 3600)
    _config: PostgresConfig

    def validate_grant(self, settings: Mapping[str, Any]) -> PostgresGrant:
        grant = super().validate_grant(settings)
        assert isinstance(grant, PostgresGrant)
        allowed = self._config.allowed_roles
        outside = sorted(set(grant.roles) - set(allowed)) if allowed is not None else []
        if outside:
            raise ConfigError(
                "postgres grant asks for roles outside the provider allowlist: "
                + ", ".join(outside),
                hint="add them to providers.<name>.allowed_roles, or fix the grant",
            )
        return grant

    # -- issue ---------------------------------------------------------------------------------

    def issue(self, request: IssueRequest) -> IssuedCredential:
        grant = self.validate_grant(request.settings)
        role = role_for_lease(request.lease_id)
        ttl = clamp_ttl(request.ttl_seconds, self.ttl_limits)
        expires_at = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=ttl.granted)
        password = secrets.token_urlsafe(32)
        with self._connect() as conn:
            self._check_grantable(conn, grant.roles)
            self._create_role(conn, role, password, expires_at, grant)
            note = (
                f"airlock lease {request.lease_id}, grant {request.grant_name}, "
                f"{request.session_name}"
            )
            conn.execute(
                sql.SQL("COMMENT ON ROLE {} IS {}").format(sql.Identifier(role), sql.Literal(note))
            )
        database = self._database()
        return IssuedCredential(
            lease_id=request.lease_id,
            grant_name=request.grant_name,
            provider=self.name,
            values=self._values(role, password, database),
            expires_at=expires_at,
            revoke_handle={"role": role, "database": database},
            ttl=ttl,
        )

    def _check_grantable(self, conn: psycopg.Connection[Any], roles: Sequence[str]) -> None:
        rows = {r[0]: r[1:] for r in conn.execute(_ROLE_ATTRS_QUERY, [roles])}
        allowed = set(self._config.allowed_roles or ())
        for role in roles:
            if role not in rows:
                raise ConfigError(f"postgres grant names role {role!r}, which does not exist")
            if any(rows[role]):
                raise ConfigError(
                    f"postgres grant names role {role!r}, which is privileged "
                    "(SUPERUSER, CREATEROLE, REPLICATION or BYPASSRLS); refusing to grant it"
                )
            if role.startswith("pg_") and role not in allowed:
                raise ConfigError(
                    f"postgres grant names predefined role {role!r}; list it in allowed_roles "
                    "to grant it"
                )

    def _create_role(
        self,
        conn: psycopg.Connection[Any],
        role: str,
        password: str,
        expires_at: datetime,
        grant: PostgresGrant,
    ) -> None:
        verifier = conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256")
        create = sql.SQL(
            "CREATE ROLE {role} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
            "NOBYPASSRLS INHERIT CONNECTION LIMIT {limit} VALID UNTIL {until} PASSWORD {pw}"
        ).format(
            role=sql.Identifier(role),
            limit=sql.Literal(grant.connection_limit),
            until=sql.Literal(expires_at.isoformat()),
            pw=sql.Literal(verifier.decode()),
        )
        try:
            conn.execute(create)
        except psycopg.errors.DuplicateObject:
            raise ProviderError(
                self.name, f"role {role} already exists; lease ids must be unique"
            ) from None
        for granted in grant.roles:
            conn.execute(
                sql.SQL("GRANT {} TO {}").format(sql.Identifier(granted), sql.Identifier(role))
            )

    def _values(self, role: str, password: str, database: str) -> dict[str, str]:
        cfg = self._config
        query = urlencode({"sslmode": cfg.sslmode}) if cfg.sslmode else ""
        url = (
            f"postgresql://{quote(role, safe='')}:{quote(password, safe='')}"
            f"@{cfg.host}:{cfg.port}/{quote(database, safe='')}"
        )
        values = {
            "PGUSER": role,
            "PGPASSWORD": password,
            "PGHOST": cfg.host,
            "PGPORT": str(cfg.port),
            "PGDATABASE": database,
            "DATABASE_URL": f"{url}?{query}" if query else url,
        }
        if cfg.sslmode:
            values["PGSSLMODE"] = cfg.sslmode
        return values

    # -- revoke --------------------------------------------------------------------------------

    def revoke(self, lease_id: str, revoke_handle: Mapping[str, str]) -> None:
        role = role_for_lease(lease_id)
        if revoke_handle.get("role", role) != role:
            raise ConfigError(f"revoke handle names role {revoke_handle['role']!r}, not {role}")
        with self._connect(autocommit=True) as conn:
            self._drop_role(conn, role)

    def _drop_role(self, conn: psycopg.Connection[Any], role: str) -> bool:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone() is None:
            return False
        ident = sql.Identifier(role)
        conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(ident))
        # The admin needs the role's privileges to signal its backends and reassign its objects.
        conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(ident))
        self._terminate_backends(conn, role)
        heir = sql.Identifier(self._config.reassign_to) if self._config.reassign_to else None
        with conn.transaction():
            conn.execute(
                sql.SQL("REASSIGN OWNED BY {} TO {}").format(ident, heir or sql.SQL("CURRENT_USER"))
            )
            conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))
            conn.execute(sql.SQL("DROP ROLE {}").format(ident))
        log.info("postgres role %s revoked and dropped", role)
        return True

    def _terminate_backends(self, conn: psycopg.Connection[Any], role: str) -> None:
        query = "SELECT pid FROM pg_stat_activity WHERE usename = %s AND pid <> pg_backend_pid()"
        deadline = time.monotonic() + _TERMINATE_WAIT_S
        while True:
            pids = [row[0] for row in conn.execute(query, [role])]
            if not pids:
                return
            if time.monotonic() > deadline:
                raise ProviderError(
                    self.name, f"sessions of {role} did not end after pg_terminate_backend"
                )
            conn.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", [pids])
            time.sleep(0.05)

    def sweep(self, now: datetime | None = None) -> list[str]:
        """Drop every ``airlock_%`` role whose ``VALID UNTIL`` is before ``now``; their names."""
        now = now or datetime.now(UTC)
        query = (
            "SELECT rolname FROM pg_roles WHERE rolname LIKE 'airlock\\_%%' "
            "AND rolvaliduntil IS NOT NULL AND rolvaliduntil < %s ORDER BY rolname"
        )
        dropped: list[str] = []
        with self._connect(autocommit=True) as conn:
            for (role,) in conn.execute(query, [now]).fetchall():
                if _LEASE_RE.match(role[len(ROLE_PREFIX) :]) and self._drop_role(conn, role):
                    dropped.append(role)
        return dropped

    # -- connection ----------------------------------------------------------------------------

    def _admin_dsn(self) -> str:
        return resolve_secret(self._config.admin_dsn.get_secret_value(), "postgres admin_dsn")

    def _database(self) -> str:
        if self._config.database:
            return self._config.database
        parsed = conninfo_to_dict(self._admin_dsn())
        return str(parsed.get("dbname") or parsed.get("user") or "postgres")

    @contextmanager
    def _connect(self, *, autocommit: bool = False) -> Iterator[psycopg.Connection[Any]]:
        dsn = self._admin_dsn()
        hidden = _dsn_secrets(dsn)
        try:
            conn = psycopg.connect(
                dsn,
                dbname=self._database(),
                connect_timeout=self._config.connect_timeout,
                autocommit=autocommit,
                application_name="airlock-broker",
            )
        except psycopg.Error as exc:
            raise ProviderError(
                self.name,
                f"cannot connect to the admin database: {redact(str(exc), hidden)}",
                hint="check admin_dsn and that PostgreSQL is reachable from the broker",
            ) from None
        try:
            with conn:
                yield conn
        except psycopg.Error as exc:
            raise ProviderError(
                self.name,
                f"{type(exc).__name__}: {redact(str(exc), hidden)}",
                hint="check that the admin role has CREATEROLE and the granted roles exist",
            ) from None


def _dsn_secrets(dsn: str) -> list[str]:
    """The password in a DSN (key/value or URL form), to redact it from error messages."""
    try:
        password = conninfo_to_dict(dsn).get("password")
    except psycopg.ProgrammingError:
        return [dsn]
    return [str(password), dsn] if password else [dsn]
