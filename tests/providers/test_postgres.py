"""The PostgreSQL provider against a real PostgreSQL 15 cluster."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from tests.providers.pg_app import ADMIN_PASSWORD, AppDatabase

from airlock.errors import ConfigError
from airlock.providers.interface import IssuedCredential, IssueRequest, ProviderError
from airlock.providers.postgres import PostgresProvider

pytestmark = pytest.mark.service


def _lease() -> str:
    return "l" + secrets.token_hex(10)


def _issue(
    provider: PostgresProvider, roles: list[str], ttl: int = 900, **settings: object
) -> IssuedCredential:
    request = IssueRequest(
        grant_name="appdb-ro",
        settings={"roles": roles, **settings},
        lease_id=_lease(),
        ttl_seconds=ttl,
        session_name="airlock-acme-api-1-1",
    )
    return provider.issue(request)


def _connect(cred: IssuedCredential) -> psycopg.Connection[tuple[object, ...]]:
    v = cred.values
    return psycopg.connect(
        host=v["PGHOST"],
        port=v["PGPORT"],
        user=v["PGUSER"],
        password=v["PGPASSWORD"],
        dbname=v["PGDATABASE"],
        autocommit=True,
    )


@pytest.fixture
def provider(app_db: AppDatabase) -> PostgresProvider:
    return PostgresProvider.from_config(app_db.provider_config())


def _role_exists(app_db: AppDatabase, role: str) -> bool:
    with app_db.superuser() as conn:
        row = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone()
        return row is not None


def test_issued_role_logs_in_and_can_do_only_what_is_granted(
    provider: PostgresProvider, app_db: AppDatabase
) -> None:
    cred = _issue(provider, ["app_ro"])
    assert cred.values["PGUSER"] == f"airlock_{cred.lease_id}"
    with _connect(cred) as conn:
        assert conn.execute("SELECT name FROM items ORDER BY id").fetchall() == [("one",), ("two",)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM payroll")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO items VALUES (3, 'three')")
    provider.revoke(cred.lease_id, cred.revoke_handle)


def test_database_url_works_and_role_attributes_are_set(
    provider: PostgresProvider, app_db: AppDatabase
) -> None:
    cred = _issue(provider, ["app_ro"], ttl=600, connection_limit=3)
    with psycopg.connect(cred.values["DATABASE_URL"]) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (cred.values["PGUSER"],)
    with app_db.superuser() as conn:
        row = conn.execute(
            "SELECT rolconnlimit, rolvaliduntil, rolsuper, rolcreaterole, "
            "shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = %s",
            [cred.values["PGUSER"]],
        ).fetchone()
    assert row is not None
    assert row[0] == 3
    assert row[1] == cred.expires_at
    assert abs((row[1] - datetime.now(UTC)).total_seconds() - 600) < 10
    assert row[2:4] == (False, False)
    assert row[4] == f"airlock lease {cred.lease_id}, grant appdb-ro, airlock-acme-api-1-1"
    provider.revoke(cred.lease_id, cred.revoke_handle)


def test_revoke_refuses_new_logins_terminates_sessions_and_drops_role(
    provider: PostgresProvider, app_db: AppDatabase
) -> None:
    cred = _issue(provider, ["app_ro"])
    open_conn = _connect(cred)
    assert open_conn.execute("SELECT count(*) FROM items").fetchone() == (2,)
    provider.revoke(cred.lease_id, cred.revoke_handle)
    with pytest.raises(psycopg.OperationalError):
        open_conn.execute("SELECT 1")
    open_conn.close()
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _connect(cred)
    assert not _role_exists(app_db, cred.values["PGUSER"])
    provider.revoke(cred.lease_id, cred.revoke_handle)  # idempotent


def test_objects_created_by_the_role_survive_revoke_owned_by_admin(
    provider: PostgresProvider, app_db: AppDatabase
) -> None:
    cred = _issue(provider, ["app_rw"])
    table = f"made_by_{cred.lease_id}"
    with _connect(cred) as conn:
        conn.execute(f"CREATE TABLE {table} (x int)")
    provider.revoke(cred.lease_id, cred.revoke_handle)
    with app_db.superuser() as conn:
        owner = conn.execute(
            "SELECT tableowner FROM pg_tables WHERE tablename = %s", [table]
        ).fetchone()
    assert owner == (app_db.admin,)


def test_expired_valid_until_refuses_login_and_sweep_drops_only_expired(
    provider: PostgresProvider, app_db: AppDatabase
) -> None:
    expired = _issue(provider, ["app_ro"])
    live = _issue(provider, ["app_ro"])
    with app_db.superuser() as conn:
        conn.execute(f"ALTER ROLE {expired.values['PGUSER']} VALID UNTIL '2000-01-01'")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _connect(expired)
    dropped = provider.sweep()
    assert expired.values["PGUSER"] in dropped
    assert live.values["PGUSER"] not in dropped
    assert not _role_exists(app_db, expired.values["PGUSER"])
    assert _role_exists(app_db, "app_ro")
    with _connect(live) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    later = datetime.now(UTC) + timedelta(hours=1)
    assert live.values["PGUSER"] in provider.sweep(later)


def test_password_never_reaches_the_server_log(
    provider: PostgresProvider, app_db: AppDatabase
) -> None:
    cred = _issue(provider, ["app_ro"])
    log = app_db.cluster.server_log()
    assert f'CREATE ROLE "{cred.values["PGUSER"]}"' in log  # statements are logged...
    assert cred.values["PGPASSWORD"] not in log  # ...but only the SCRAM verifier is sent
    provider.revoke(cred.lease_id, cred.revoke_handle)


def test_ttl_is_clamped_and_the_reason_recorded(provider: PostgresProvider) -> None:
    cred = _issue(provider, ["app_ro"], ttl=5)
    assert cred.ttl is not None
    assert (cred.ttl.requested, cred.ttl.granted) == (5, 60)
    assert cred.ttl.reason is not None
    assert "minimum" in cred.ttl.reason
    provider.revoke(cred.lease_id, cred.revoke_handle)


@pytest.mark.parametrize(
    ("roles", "message"),
    [
        (["danger"], "privileged"),
        (["postgres"], "privileged"),
        (["pg_read_server_files"], "predefined"),
        (["no_such_role"], "does not exist"),
    ],
)
def test_dangerous_or_missing_roles_are_refused_and_nothing_is_created(
    provider: PostgresProvider, app_db: AppDatabase, roles: list[str], message: str
) -> None:
    lease = _lease()
    request = IssueRequest("g", {"roles": roles}, lease)
    with pytest.raises(ConfigError, match=message):
        provider.issue(request)
    assert not _role_exists(app_db, f"airlock_{lease}")


def test_allowlist_is_enforced_at_validation(app_db: AppDatabase) -> None:
    provider = PostgresProvider.from_config(app_db.provider_config(allowed_roles=["app_ro"]))
    provider.validate_grant({"roles": ["app_ro"]})
    with pytest.raises(ConfigError, match="outside the provider allowlist: app_rw"):
        provider.validate_grant({"roles": ["app_ro", "app_rw"]})
    with pytest.raises(ConfigError, match="roles"):
        provider.validate_grant({"roles": []})
    with pytest.raises(ConfigError, match="superuser: Extra inputs"):
        provider.validate_grant({"roles": ["app_ro"], "superuser": True})


def test_role_names_are_quoted_not_injected(
    provider: PostgresProvider, app_db: AppDatabase
) -> None:
    with app_db.superuser() as conn:
        conn.execute('CREATE ROLE "odd; DROP TABLE items; --" NOLOGIN')
    cred = _issue(provider, ["odd; DROP TABLE items; --"])
    with app_db.superuser() as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (2,)
    provider.revoke(cred.lease_id, cred.revoke_handle)


def test_bad_lease_id_and_tampered_handle_are_refused(provider: PostgresProvider) -> None:
    with pytest.raises(ConfigError, match="lease id"):
        provider.issue(IssueRequest("g", {"roles": ["app_ro"]}, 'x"; DROP ROLE app_ro; --'))
    with pytest.raises(ConfigError, match="revoke handle"):
        provider.revoke("labc", {"role": "app_ro"})


def test_unreachable_database_fails_closed_without_the_password(app_db: AppDatabase) -> None:
    dsn = f"host=127.0.0.1 port=1 dbname=appdb user=x password={ADMIN_PASSWORD}"
    provider = PostgresProvider.from_config({"admin_dsn": dsn, "host": "db"})
    with pytest.raises(ProviderError) as info:
        provider.issue(IssueRequest("g", {"roles": ["app_ro"]}, _lease()))
    assert ADMIN_PASSWORD not in info.value.explain()
    assert "cannot connect" in info.value.message
    assert info.value.exit_code == 85


def test_wrong_admin_password_fails_closed_without_the_password(app_db: AppDatabase) -> None:
    wrong = "Wr0ng-" + secrets.token_hex(8)
    dsn = app_db.cluster.dsn(app_db.admin, wrong, "appdb")
    provider = PostgresProvider.from_config({"admin_dsn": dsn, "host": "db"})
    with pytest.raises(ProviderError) as info:
        provider.issue(IssueRequest("g", {"roles": ["app_ro"]}, _lease()))
    assert wrong not in info.value.explain()
    assert "password authentication failed" in info.value.message


def test_admin_dsn_from_env(app_db: AppDatabase, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_ADMIN_DSN", app_db.admin_dsn)
    provider = PostgresProvider.from_config(
        {"admin_dsn": "env:TEST_ADMIN_DSN", "host": "127.0.0.1", "port": app_db.cluster.port}
    )
    cred = _issue(provider, ["app_ro"])
    assert cred.values["PGDATABASE"] == "appdb"
    provider.revoke(cred.lease_id, cred.revoke_handle)
    assert app_db.admin_dsn not in repr(provider.__dict__)
