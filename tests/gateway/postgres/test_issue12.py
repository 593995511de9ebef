"""Issue 12 regressions, each with a real client against a real PostgreSQL: guardrail bypass by
settings, MERGE, one approval = one execution, held statements dying with their client."""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from tests.gateway.postgres.conftest import (
    APP_USER,
    SECRET_IN_DATA,
    MakeGateway,
    RunningGateway,
    Upstream,
)

pytestmark = pytest.mark.service

NO_UNSCOPED = {
    "id": "no-unscoped-delete",
    "sql": {"kinds": ["delete", "update"], "without_where": True},
    "action": "deny",
}


@pytest.fixture
def victims(upstream: Upstream) -> Iterator[str]:
    """A table of 10 rows the agent will try to delete, owned by the gateway's login."""
    name = f"victims_{secrets.token_hex(3)}"
    with upstream.superuser() as conn:
        conn.execute(f"CREATE TABLE {name} AS SELECT i AS id FROM generate_series(1, 10) i")
        conn.execute(f"ALTER TABLE {name} OWNER TO {APP_USER}")
    yield name
    with upstream.superuser() as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")


def _count(upstream: Upstream, table: str) -> int:
    with upstream.superuser() as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def _exists(upstream: Upstream, table: str) -> bool:
    with upstream.superuser() as conn:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
    return bool(row and row[0])


def _wait_for(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


# ------------------------------------------------------------ 1: settings that change parsing


def test_standard_conforming_strings_off_is_denied_and_the_delete_never_runs(
    make_gateway: MakeGateway, upstream: Upstream, victims: str
) -> None:
    gw = make_gateway(rules=[NO_UNSCOPED])
    result = gw.psql(
        "SET standard_conforming_strings = off",
        "-c",
        f"SELECT 'x\\''; DELETE FROM {victims}; --'",
    )
    assert result.returncode != 0
    assert "airlock.builtin.parse_state" in result.stderr
    assert _count(upstream, victims) == 10
    decisions = gw.of_type("guardrail.decision")
    assert any(d["rule_id"] == "airlock.builtin.parse_state" for d in decisions)


@pytest.mark.parametrize(
    "setter",
    [
        "SELECT set_config('standard_conforming_strings', 'off', false)",
        "SELECT set_config(lower('STANDARD_conforming_strings'), 'off', false)",
        "UPDATE pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings'",
        "SET client_encoding = 'SJIS'",
        "SET backslash_quote = on",
    ],
)
def test_every_way_of_setting_it_is_denied(make_gateway: MakeGateway, setter: str) -> None:
    gw = make_gateway()
    with psycopg.connect(gw.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="parse_state"):
            conn.execute(setter)
        row = conn.execute("SHOW standard_conforming_strings").fetchone()
        assert row == ("on",)


def test_a_setting_changed_out_of_sight_refuses_what_would_read_differently(
    make_gateway: MakeGateway, upstream: Upstream, victims: str
) -> None:
    """A function the gateway cannot read turns the setting off: the server says so
    (ParameterStatus) and the gateway refuses statements whose reading depends on it."""
    with upstream.superuser() as conn:
        conn.execute(
            "CREATE OR REPLACE FUNCTION public.flip() RETURNS text LANGUAGE sql AS "
            "$$ SELECT set_config('standard_conforming_strings', 'off', false) $$"
        )
    gw = make_gateway(rules=[NO_UNSCOPED])
    with psycopg.connect(gw.dsn(), autocommit=True) as conn:
        conn.execute("SELECT public.flip()")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="parse_state"):
            conn.execute(f"SELECT 'x\\''; DELETE FROM {victims}; --'", prepare=False)
        assert conn.execute("SELECT 'plain' || 'text'").fetchone() == ("plaintext",)
    assert _count(upstream, victims) == 10


def test_an_unsafe_client_encoding_at_startup_is_refused(make_gateway: MakeGateway) -> None:
    gw = make_gateway()
    with pytest.raises(psycopg.OperationalError, match="client_encoding"):
        psycopg.connect(gw.dsn(client_encoding="SJIS"), connect_timeout=5).close()


# ---------------------------------------------------------------------- 2: statement kinds


def test_merge_with_delete_is_judged_as_a_delete(
    make_gateway: MakeGateway, upstream: Upstream, victims: str
) -> None:
    gw = make_gateway(rules=[NO_UNSCOPED])
    merge = f"MERGE INTO {victims} v USING (SELECT 1 AS one) s ON true WHEN MATCHED THEN DELETE"
    result = gw.psql(merge)
    assert result.returncode != 0 and "no-unscoped-delete" in result.stderr
    assert _count(upstream, victims) == 10


def test_sql_execute_is_judged_as_the_statement_it_runs(
    make_gateway: MakeGateway, upstream: Upstream, victims: str
) -> None:
    gw = make_gateway(rules=[{"id": "no-delete", "sql": {"kinds": ["delete"]}, "action": "deny"}])
    with psycopg.connect(gw.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="no-delete"):
            conn.execute(f"PREPARE d AS DELETE FROM {victims} WHERE id > $1")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("EXECUTE d(0)")  # never prepared through the gateway: not judged
    assert _count(upstream, victims) == 10


def test_plpgsql_dynamic_execute_is_denied(
    make_gateway: MakeGateway, upstream: Upstream, victims: str
) -> None:
    gw = make_gateway()
    body = f"DO $$ BEGIN EXECUTE 'DELETE FROM ' || '{victims}'; END $$"
    result = gw.psql(body)
    assert result.returncode != 0 and "airlock.builtin.dynamic_sql" in result.stderr
    assert _count(upstream, victims) == 10


# ----------------------------------------------------- 3: one approval = one execution


def _approve_first_only() -> tuple[Callable[[Any], bool], list[str]]:
    asked: list[str] = []

    def approve(op: Any) -> bool:
        asked.append(op.text)
        return len(asked) == 1

    return approve, asked


def test_one_approval_runs_one_execution_of_a_prepared_update(
    make_gateway: MakeGateway, upstream: Upstream
) -> None:
    approve, asked = _approve_first_only()
    gw = make_gateway(
        rules=[{"id": "notes-ok", "sql": {"kinds": ["update"]}, "action": "require_approval"}],
        approve=approve,
    )
    with upstream.superuser() as conn:
        conn.execute("INSERT INTO notes (id, body) VALUES (101, 'a'), (102, 'b') "
                     "ON CONFLICT (id) DO UPDATE SET body = excluded.body")  # fmt: skip
    outcomes = []
    with psycopg.connect(gw.dsn(), autocommit=True) as conn:
        for value, row in [("one", 101), ("two", 102), ("three", 101), ("four", 102)]:
            try:
                conn.execute("UPDATE notes SET body = %s WHERE id = %s", (value, row), prepare=True)
                outcomes.append("ran")
            except psycopg.errors.InsufficientPrivilege:
                outcomes.append("refused")
    assert outcomes == ["ran", "refused", "refused", "refused"]
    assert len(asked) == 4  # every execution asked, each with its own parameter values
    assert "'one'" in asked[0] or '"one"' in asked[0]
    assert '"two"' in asked[1]
    with upstream.superuser() as conn:
        rows = conn.execute("SELECT id, body FROM notes WHERE id IN (101, 102) ORDER BY id")
        assert rows.fetchall() == [(101, "one"), (102, "b")]


def test_one_approval_runs_one_sql_execute(make_gateway: MakeGateway, upstream: Upstream) -> None:
    approve, asked = _approve_first_only()
    gw = make_gateway(
        rules=[{"id": "notes-ok", "sql": {"kinds": ["update"]}, "action": "require_approval"}],
        approve=approve,
    )
    with psycopg.connect(gw.dsn(), autocommit=True) as conn:
        conn.execute("PREPARE u AS UPDATE notes SET body = $1 WHERE id = $2")  # asked: yes
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("EXECUTE u('x', 101)")  # asked again: no
    assert len(asked) == 2 and "EXECUTE u" in asked[1]


# --------------------------------------------- 4: held statements die with their client


def _held_until_released() -> tuple[Callable[[Any], Any], threading.Event, list[Any]]:
    release = threading.Event()
    asked: list[Any] = []

    async def approve(op: Any) -> bool:
        asked.append(op)
        while not release.is_set():
            await asyncio.sleep(0.01)
        return True

    return approve, release, asked


def test_a_held_drop_never_runs_once_its_client_is_killed(
    make_gateway: MakeGateway, upstream: Upstream, victims: str
) -> None:
    approve, release, asked = _held_until_released()
    gw = make_gateway(
        rules=[{"id": "drops", "sql": {"kinds": ["drop"]}, "action": "require_approval"}],
        approve=approve,
    )
    psql = _psql_in_background(gw, f"DROP TABLE {victims}")
    try:
        _wait_for(lambda: bool(asked), "the approval request")
        psql.send_signal(signal.SIGKILL)
        psql.wait(10)
        _wait_for(lambda: bool(gw.of_type("approval.cancelled")), "approval.cancelled")
    finally:
        release.set()
    assert _alive_after(gw)
    assert _exists(upstream, victims)
    assert f"DROP TABLE {victims}" not in upstream.cluster.server_log()
    cancelled = gw.of_type("approval.cancelled")[0]
    assert cancelled["rule_id"] == "drops" and "DROP TABLE" in cancelled["sql"]
    results = gw.of_type("db.result")
    assert any(r.get("error", {}).get("sqlstate") == "57014" for r in results)


def _psql_in_background(gw: RunningGateway, sql: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["psql", "-X", "-h", gw.host, "-p", str(gw.port), "-U", "agent", "-d", "x", "-c", sql],
        env={"PGPASSWORD": gw.ticket.value, "PATH": "/usr/bin:/bin"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _alive_after(gw: RunningGateway) -> bool:
    with psycopg.connect(gw.dsn(), connect_timeout=5) as conn:
        return conn.execute("SELECT 1").fetchone() == (1,)


def test_closing_the_gateway_records_every_pending_hold_without_tracebacks(
    make_gateway: MakeGateway,
    upstream: Upstream,
    victims: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    approve, release, asked = _held_until_released()
    gw = make_gateway(
        rules=[{"id": "drops", "sql": {"kinds": ["drop"]}, "action": "require_approval"}],
        approve=approve,
    )
    clients = [_psql_in_background(gw, f"DROP TABLE {victims}") for _ in range(2)]
    try:
        _wait_for(lambda: len(asked) == 2, "both approval requests")
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            gw.handle.close()
        for client in clients:
            client.wait(10)
    finally:
        release.set()
    assert len(gw.of_type("approval.cancelled")) == 2
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []
    assert _exists(upstream, victims)


# ------------------------------------------------------------------- 7: NOTIFY payloads


def test_notify_payloads_are_masked(gateway: RunningGateway) -> None:
    with (
        psycopg.connect(gateway.dsn(), autocommit=True) as listener,
        psycopg.connect(gateway.dsn(), autocommit=True) as sender,
    ):
        listener.execute("LISTEN airlock_ch")
        sender.execute("SELECT pg_notify('airlock_ch', %s)", (f"token {SECRET_IN_DATA} here",))
        received = [n.payload for n in listener.notifies(timeout=10, stop_after=1)]
    assert len(received) == 1 and SECRET_IN_DATA not in received[0]
    assert received == ["token [MASKED:env:API_SECRET] here"]
