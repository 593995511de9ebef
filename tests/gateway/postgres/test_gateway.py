"""The PostgreSQL gateway against a real PostgreSQL, with psql, psycopg 3, asyncpg and raw bytes."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import struct
import subprocess
import time

import asyncpg
import psycopg
import pytest
from tests.gateway.postgres.conftest import (
    SECRET_IN_DATA,
    MakeGateway,
    RunningGateway,
    Upstream,
)

from airlock.gateway.postgres.encode import encode_password, encode_query, encode_startup
from airlock.gateway.postgres.framing import BackendParser
from airlock.gateway.postgres.messages import DataRow, ErrorResponse, Message

# ------------------------------------------------------------------------- raw client


def _raw_connect(gw: RunningGateway, password: str | None = None) -> socket.socket:
    sock = socket.create_connection((gw.host, gw.port), timeout=10)
    sock.sendall(encode_startup({"user": "agent", "database": "x"}))
    _read_until(sock, b"R")
    sock.sendall(encode_password((password or gw.ticket.value).encode() + b"\0"))
    return sock


def _read_until(sock: socket.socket, kind: bytes) -> list[Message]:
    parser = BackendParser()
    messages: list[Message] = []
    while True:
        data = sock.recv(65536)
        if not data:
            return messages
        parser.feed(data)
        for message in parser:
            messages.append(message)
            if message.raw[:1] == kind:
                return messages


def _raw_bytes_of_query(gw: RunningGateway, sql: str) -> bytes:
    sock = _raw_connect(gw)
    _read_until(sock, b"Z")
    sock.sendall(encode_query(sql))
    received = b"".join(m.raw for m in _read_until(sock, b"Z"))
    sock.close()
    return received


def test_a_query_pipelined_behind_the_password_is_answered(gateway: RunningGateway) -> None:
    """Password and a Query in one write: the query is relayed after login, not dropped."""
    with socket.create_connection((gateway.host, gateway.port), timeout=10) as sock:
        sock.sendall(encode_startup({"user": "agent", "database": "x"}))
        _read_until(sock, b"R")
        password = encode_password(gateway.ticket.value.encode() + b"\0")
        sock.sendall(password + encode_query("SELECT 41 + 1 AS answer"))
        received = _read_until(sock, b"Z") + _read_until(sock, b"Z")
    rows = [m for m in received if m.raw[:1] == b"D"]
    assert len(rows) == 1 and rows[0].raw.endswith(b"42")


def test_closing_with_clients_connected_logs_no_error(
    make_gateway: MakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    gw = make_gateway()
    sockets = [_raw_connect(gw) for _ in range(3)]
    for sock in sockets:
        _read_until(sock, b"Z")  # logged in, idle: the relay is waiting on them
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        gw.handle.close()
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []
    for sock in sockets:
        sock.settimeout(10)
        assert sock.recv(65536) == b""  # closed by the gateway, not left hanging
        sock.close()


# ----------------------------------------------------------------------------- psql


def test_psql_reads_through_the_gateway_with_columns_masked(gateway: RunningGateway) -> None:
    result = gateway.psql("SELECT id, name, email, password FROM users ORDER BY id LIMIT 2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "1|user1|[MASKED:column]|[MASKED:column]",
        "2|user2|[MASKED:column]|[MASKED:column]",
    ]


def test_masking_is_on_the_bytes_the_client_receives(gateway: RunningGateway) -> None:
    received = _raw_bytes_of_query(gateway, "SELECT email, password, name, body FROM users, notes")
    assert b"@example.com" not in received and b"pw1" not in received
    assert SECRET_IN_DATA.encode() not in received
    assert b"[MASKED:column]" in received and b"[MASKED:env:API_SECRET]" in received
    assert b"user1" in received  # unmasked columns pass
    # lengths rewritten correctly: the stream parses cleanly into rows of 4 values
    rows = [m for m in _parse(received) if isinstance(m, DataRow)]
    assert len(rows) == 10 and all(len(r.values) == 4 for r in rows)


def _parse(data: bytes) -> list[Message]:
    parser = BackendParser()
    parser.feed(data)
    return list(parser)


def test_refused_statement_names_the_rule_and_the_connection_stays_usable(
    gateway: RunningGateway,
) -> None:
    with psycopg.connect(gateway.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
            conn.execute("DROP TABLE users")
        assert "no-drop" in str(info.value) and info.value.diag.message_hint
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (10,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="no-unscoped-delete"):
            conn.execute("WITH d AS (DELETE FROM notes RETURNING *) SELECT * FROM d")
    with psycopg.connect(gateway.dsn()) as conn:
        assert conn.execute("SELECT count(*) FROM notes").fetchone() == (1,)
    decisions = gateway.of_type("guardrail.decision")
    assert {d["rule_id"] for d in decisions} == {"no-drop", "no-unscoped-delete"}
    assert all(d["action"] == "deny" for d in decisions)


def test_a_refusal_aborts_the_open_transaction_like_a_real_error(
    gateway: RunningGateway, upstream: Upstream
) -> None:
    result = gateway.psql(
        "BEGIN; INSERT INTO notes (body) VALUES ('kept?'); DROP TABLE users; COMMIT;",
        "-v", "ON_ERROR_STOP=0",
    )  # fmt: skip
    assert "no-drop" in result.stderr
    with upstream.superuser() as conn:
        assert conn.execute("SELECT count(*) FROM notes WHERE body = 'kept?'").fetchone() == (0,)
        assert conn.execute("SELECT to_regclass('public.users')").fetchone() == ("users",)


def test_pipeline_keeps_responses_in_order_around_a_refusal(gateway: RunningGateway) -> None:
    with psycopg.connect(gateway.dsn(), autocommit=True) as conn:
        with conn.pipeline() as pipe:
            first = conn.execute("SELECT 1")
            pipe.sync()
            conn.execute("TRUNCATE notes")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                pipe.sync()
            third = conn.execute("SELECT 3")
        assert first.fetchone() == (1,) and third.fetchone() == (3,)


def test_every_statement_is_recorded_with_its_result(gateway: RunningGateway) -> None:
    with psycopg.connect(gateway.dsn(), autocommit=True) as conn:
        conn.execute("SELECT * FROM users WHERE name = %s", (f"x {SECRET_IN_DATA}",))
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1/0")
    queries = gateway.of_type("db.query")
    extended = [q for q in queries if q["protocol"] == "extended"]
    assert extended and extended[0]["params"] == ["x [MASKED:env:API_SECRET]"]
    assert extended[0]["kinds"] == ["select"] and extended[0]["gateway"] == "appdb"
    results = gateway.of_type("db.result")
    assert any(r.get("tag") == "SELECT 0" and r["rows"] == 0 for r in results)
    errors = [r for r in results if "error" in r]
    assert errors[-1]["error"]["sqlstate"] == "22012"
    assert all(isinstance(r["duration_ms"], float) for r in results)
    logged = repr(gateway.events)
    assert SECRET_IN_DATA not in logged and gateway.ticket.value not in logged


# --------------------------------------------------------------------------- psycopg


def test_psycopg_extended_protocol_and_prepared_statements(gateway: RunningGateway) -> None:
    with psycopg.connect(gateway.dsn(), autocommit=True) as conn:
        for i in range(1, 6):  # psycopg prepares server-side after the 5th run
            row = conn.execute("SELECT id, email FROM users WHERE id = %s", (i,), prepare=True)
            assert row.fetchone() == (i, "[MASKED:column]")
        profile = conn.execute("SELECT profile, password FROM users WHERE id = 1").fetchone()
        assert profile == ({"a": 1}, "[MASKED:column]")


def test_copy_both_ways(gateway: RunningGateway) -> None:
    with psycopg.connect(gateway.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE t (n int, s text)")
        # COPY FROM is an insert: qualified, so the fixture's audit.* insert rule does not hold it
        with conn.cursor().copy("COPY pg_temp.t FROM STDIN") as copy:
            for i in range(1000):
                copy.write_row((i, f"row {i}"))
        assert conn.execute("SELECT count(*), sum(n) FROM t").fetchone() == (1000, 499500)
        out = bytearray()
        with conn.cursor().copy("COPY (SELECT n, s FROM t ORDER BY n) TO STDOUT") as copy:
            for chunk in copy:
                out += chunk
        assert out.count(b"\n") == 1000 and out.startswith(b"0\trow 0\n")
    results = gateway.of_type("db.result")
    assert any(r.get("tag") == "COPY 1000" and r["rows"] == 1000 for r in results)


def test_copy_to_stdout_is_value_masked(gateway: RunningGateway) -> None:
    with psycopg.connect(gateway.dsn(), autocommit=True) as conn:
        out = bytearray()
        with conn.cursor().copy("COPY (SELECT body FROM notes) TO STDOUT") as copy:
            for chunk in copy:
                out += chunk
    assert SECRET_IN_DATA.encode() not in out and b"[MASKED:env:API_SECRET]" in out


def test_large_result_of_100k_rows(gateway: RunningGateway) -> None:
    with psycopg.connect(gateway.dsn()) as conn:
        rows = conn.execute("SELECT n, h FROM big ORDER BY n").fetchall()
    assert len(rows) == 100_000 and rows[-1][0] == 100_000
    assert rows[0][1] == "c4ca4238a0b923820dcc509a6f75849b"  # md5('1') passes unmasked


def test_a_client_that_reads_slowly_gets_every_row_while_others_are_served(
    gateway: RunningGateway,
) -> None:
    sock = _raw_connect(gateway)
    _read_until(sock, b"Z")
    sock.sendall(encode_query("SELECT n, h FROM big ORDER BY n"))
    time.sleep(0.5)  # the result backs up: the gateway must stop reading upstream, not buffer
    assert _alive(gateway)
    messages = _read_until(sock, b"Z")
    sock.close()
    rows = [m for m in messages if isinstance(m, DataRow)]
    assert len(rows) == 100_000 and rows[-1].values[0] == b"100000"


def test_cancel_from_psql_reaches_the_upstream(gateway: RunningGateway) -> None:
    # psql in its own process: psycopg's binary cancel() holds the GIL inside libpq, which would
    # freeze a gateway running in this very process (a test artefact, not a gateway property).
    env = {"PGPASSWORD": gateway.ticket.value, "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen(
        ["psql", "-X", "-h", gateway.host, "-p", str(gateway.port), "-U", "agent", "-d", "x",
         "-c", "SELECT pg_sleep(20)"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(1.0)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)  # psql sends a CancelRequest on ^C
    _, err = proc.communicate(timeout=15)
    assert time.monotonic() - started < 10
    assert "canceling statement due to user request" in err


def test_cancel_from_asyncpg_reaches_the_upstream(gateway: RunningGateway) -> None:
    async def scenario() -> None:
        conn = await asyncpg.connect(gateway.url(), ssl=False)
        try:
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await conn.fetch("SELECT pg_sleep(20)", timeout=0.5)
            assert await conn.fetchval("SELECT 5") == 5  # cancelled, not still sleeping
            assert time.monotonic() - started < 10
        finally:
            await conn.close()

    asyncio.run(scenario())


def test_sslmode_prefer_falls_back_to_plain(gateway: RunningGateway) -> None:
    with psycopg.connect(gateway.dsn(sslmode="prefer")) as conn:
        assert conn.execute("SELECT 42").fetchone() == (42,)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(gateway.dsn(sslmode="require"), connect_timeout=5)


def test_wrong_ticket_is_an_authentication_failure(gateway: RunningGateway) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed") as info:
        psycopg.connect(gateway.dsn(password="not-the-ticket"))
    assert "session ticket" in str(info.value)
    assert any("wrong ticket" in e["error"] for e in gateway.of_type("airlock.error"))
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(gateway.dsn(password=upstream_password_guess()))


def upstream_password_guess() -> str:
    return "postgres"


def test_the_upstream_password_never_reaches_the_client(
    gateway: RunningGateway, upstream: Upstream
) -> None:
    received = _raw_bytes_of_query(gateway, "SELECT current_user, session_user")
    assert upstream.password.encode() not in received
    assert b"gw_app" in received  # the held identity is the upstream's


# --------------------------------------------------------------------------- asyncpg


def test_asyncpg_fetch_prepare_and_copy(gateway: RunningGateway) -> None:
    async def scenario() -> None:
        conn = await asyncpg.connect(gateway.url(), ssl=False)
        try:
            rows = await conn.fetch("SELECT id, email FROM users WHERE id <= $1 ORDER BY id", 3)
            assert [tuple(r) for r in rows] == [(i, "[MASKED:column]") for i in (1, 2, 3)]
            stmt = await conn.prepare("SELECT name FROM users WHERE id = $1")
            assert await stmt.fetchval(4) == "user4"
            await conn.execute("CREATE TEMP TABLE c (n int)")
            records = [(i,) for i in range(500)]  # COPY FROM: an insert, into pg_temp (not audit.*)
            await conn.copy_records_to_table("c", records=records, schema_name="pg_temp")
            assert await conn.fetchval("SELECT sum(n) FROM c") == 124750
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="no-drop"):
                await conn.execute("DROP TABLE c")
            assert await conn.fetchval("SELECT 7") == 7
        finally:
            await conn.close()

    asyncio.run(scenario())


# ---------------------------------------------------------------------- approvals


def test_require_approval_waits_and_runs_when_approved(make_gateway: MakeGateway) -> None:
    async def slow_yes(op: object) -> bool:
        await asyncio.sleep(0.3)
        return True

    gw = make_gateway(
        rules=[{"id": "audit-ok", "sql": {"tables": ["audit.*"]}, "action": "require_approval"}],
        approve=slow_yes,
    )
    with psycopg.connect(gw.dsn(), autocommit=True) as conn:
        started = time.monotonic()
        conn.execute("INSERT INTO audit.log VALUES (1, 'approved')")
        assert time.monotonic() - started >= 0.3
        assert conn.execute("SELECT msg FROM audit.log WHERE id = 1").fetchone() == ("approved",)
    assert [op.rule_id for op in gw.approvals][:1] == ["audit-ok"]
    assert gw.approvals[0].kind == "sql" and "INSERT INTO audit.log" in gw.approvals[0].text
    assert any(d.get("approval") == "approved" for d in gw.of_type("guardrail.decision"))


def test_messages_pipelined_behind_a_held_statement_wait_and_keep_their_order(
    make_gateway: MakeGateway,
) -> None:
    async def slow_yes(op: object) -> bool:
        await asyncio.sleep(0.2)
        return True

    gw = make_gateway(
        rules=[{"id": "audit-ok", "sql": {"tables": ["audit.*"]}, "action": "require_approval"}],
        approve=slow_yes,
    )
    with psycopg.connect(gw.dsn(), autocommit=True) as conn:
        with conn.pipeline():
            conn.execute("INSERT INTO audit.log VALUES (3, 'pipelined')")
            read_back = conn.execute("SELECT msg FROM audit.log WHERE id = 3")
            after = conn.execute("SELECT 2")
        assert read_back.fetchone() == ("pipelined",) and after.fetchone() == (2,)
    held = [op.text for op in gw.approvals]
    assert len(held) == 2 and "INSERT" in held[0] and "SELECT msg" in held[1]


def test_require_approval_denied_is_refused(make_gateway: MakeGateway) -> None:
    gw = make_gateway(
        rules=[{"id": "audit-ok", "sql": {"tables": ["audit.*"]}, "action": "require_approval"}]
    )  # the fixture's default approver says no
    with psycopg.connect(gw.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="approval was denied"):
            conn.execute("DELETE FROM audit.log WHERE id = 99")
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_failing_approver_fails_closed(make_gateway: MakeGateway) -> None:
    def broken(op: object) -> bool:
        raise RuntimeError("backend down")

    gw = make_gateway(
        rules=[{"id": "hold", "sql": {"kinds": ["insert"]}, "action": "require_approval"}],
        approve=broken,
    )
    with (
        psycopg.connect(gw.dsn(), autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute("INSERT INTO audit.log VALUES (2, 'no')")
    assert any("approval failed" in e["error"] for e in gw.of_type("airlock.error"))


# ------------------------------------------------------------------------ bad input


def _alive(gw: RunningGateway) -> bool:
    with psycopg.connect(gw.dsn(), connect_timeout=5) as conn:
        return conn.execute("SELECT 1").fetchone() == (1,)


def _error_then_close(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_garbage_gets_a_protocol_error_and_the_gateway_keeps_serving(
    gateway: RunningGateway,
) -> None:
    with socket.create_connection((gateway.host, gateway.port), timeout=10) as sock:
        sock.sendall(b"\x00\x00\x00\x10GARBAGE GARBAGE!")
        data = _error_then_close(sock)
    error = _parse(data)[0]
    assert isinstance(error, ErrorResponse) and error.sqlstate == "08P01"
    assert _alive(gateway)
    assert any("protocol" in e["error"] or "version" in e["error"]
               for e in gateway.of_type("airlock.error"))  # fmt: skip


def test_oversized_message_after_login_is_refused(gateway: RunningGateway) -> None:
    sock = _raw_connect(gateway)
    _read_until(sock, b"Z")
    sock.sendall(b"Q" + struct.pack("!i", 512 * 1024 * 1024))
    messages = _parse(_error_then_close(sock))
    sock.close()
    assert isinstance(messages[-1], ErrorResponse) and messages[-1].sqlstate == "08P01"
    assert _alive(gateway)


def test_slowloris_startup_times_out_without_blocking_others(make_gateway: MakeGateway) -> None:
    gw = make_gateway(startup_timeout=0.5)
    with socket.create_connection((gw.host, gw.port), timeout=10) as slow:
        slow.sendall(b"\x00\x00")  # half a length, then nothing
        assert _alive(gw)
        started = time.monotonic()
        data = _error_then_close(slow)
        assert time.monotonic() - started < 5
    assert isinstance(_parse(data)[0], ErrorResponse)
    assert any("timed out" in e["error"] for e in gw.of_type("airlock.error"))


def test_upstream_disappearing_mid_session(gateway: RunningGateway, upstream: Upstream) -> None:
    with psycopg.connect(gateway.dsn(application_name="doomed"), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        with upstream.superuser() as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'doomed'"
            )
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 2")
    assert _alive(gateway)
    assert any("upstream" in e["error"] for e in gateway.of_type("airlock.error"))


def test_unreachable_upstream_is_a_clean_error(make_gateway: MakeGateway) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    gw = make_gateway(
        upstream={"host": "127.0.0.1", "port": free_port, "database": "x", "tls": "disable"}
    )
    with pytest.raises(psycopg.OperationalError, match="cannot reach its upstream"):
        psycopg.connect(gw.dsn(), connect_timeout=5)


def test_upstream_tls_required_but_not_offered_fails_closed(make_gateway: MakeGateway) -> None:
    gw = make_gateway(upstream={"host": "127.0.0.1", "port": 1, "database": "x", "tls": "require"})
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(gw.dsn(), connect_timeout=5)
