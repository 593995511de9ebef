"""Issue 12 regressions, each with a real client against a real PostgreSQL: guardrail bypass by
settings, MERGE, one approval = one execution, held statements dying with their client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import psycopg
import pytest
from tests.gateway.postgres.conftest import (
    APP_USER,
    SECRET_IN_DATA,
    MakeGateway,
    RunningGateway,
    Upstream,
)

from airlock.gateway.postgres.encode import (
    encode_message,
    encode_parse,
    encode_password,
    encode_query,
    encode_ready,
    encode_startup,
)
from airlock.gateway.postgres.framing import BackendParser
from airlock.gateway.postgres.messages import DataRow, ErrorResponse, Message, ReadyForQuery

pytestmark = pytest.mark.service

NO_UNSCOPED = {
    "id": "no-unscoped-delete",
    "sql": {"kinds": ["delete", "update"], "without_where": True},
    "action": "deny",
}


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
        _wait_for(lambda: bool(_never_sent(gw)), "the held statement's result")
    finally:
        release.set()
    assert _alive_after(gw)
    assert _exists(upstream, victims)
    assert f"DROP TABLE {victims}" not in upstream.cluster.server_log()
    (result,) = _never_sent(gw)
    assert "never sent" in result["error"]["message"]


def test_a_held_statement_whose_client_left_is_cancelled_once_at_the_gate(
    make_gateway: MakeGateway, upstream: Upstream, victims: str, tmp_path: Any
) -> None:
    """With a real approval gate, the cancellation is one ``approval.cancelled`` (the gate's),
    bound to the request; the gateway records the statement's result, not a second one."""
    from airlock.audit import SigningKey
    from airlock.gate import FileBackend
    from airlock.gate.interface import approver

    gate_events: list[tuple[str, dict[str, Any]]] = []
    backend = FileBackend(
        tmp_path / "approvals",
        key=SigningKey.generate(),
        record=lambda kind, data: gate_events.append((str(kind), dict(data))) or 0,
    )
    gw = make_gateway(
        rules=[{"id": "drops", "sql": {"kinds": ["drop"]}, "action": "require_approval"}],
        approve=approver(backend, timeout=60),
    )
    psql = _psql_in_background(gw, f"DROP TABLE {victims}")
    _wait_for(lambda: any(k == "approval.requested" for k, _ in gate_events), "the request")
    psql.send_signal(signal.SIGKILL)
    psql.wait(10)
    _wait_for(lambda: bool(_never_sent(gw)), "the held statement's result")
    _wait_for(lambda: any(k == "approval.cancelled" for k, _ in gate_events), "the cancel")
    cancelled = [d for k, d in gate_events if k == "approval.cancelled"]
    requested = [d for k, d in gate_events if k == "approval.requested"]
    assert len(cancelled) == 1 and cancelled[0]["request_id"] == requested[0]["request_id"]
    assert gw.of_type("approval.cancelled") == []
    assert _exists(upstream, victims)


def _never_sent(gw: RunningGateway) -> list[dict[str, Any]]:
    """The db.result events of statements cancelled while held (57014, never sent)."""
    results = gw.of_type("db.result")
    return [r for r in results if r.get("error", {}).get("sqlstate") == "57014"]


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
    assert len(_never_sent(gw)) == 2
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


# ------------------------------------------------- 5: masking in the formats clients asked for

MASKED = "[MASKED:column]"


@pytest.fixture
def kept(upstream: Upstream) -> Iterator[str]:
    """A table with masked columns of several types."""
    name = f"kept_{secrets.token_hex(3)}"
    with upstream.superuser() as conn:
        conn.execute(
            f"CREATE TABLE {name} (id int, email text, profile jsonb, doc json, blob bytea, "
            "tags text[], codes int[], pin int)"
        )
        conn.execute(
            f"INSERT INTO {name} VALUES (1, 'a@example.com', '{{\"k\": 1}}', '[1]', "
            "'\\x0102', '{x,y}', '{1,2}', 1234)"
        )
        conn.execute(f"ALTER TABLE {name} OWNER TO {APP_USER}")
    yield name
    with upstream.superuser() as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")


MASK_ALL = ["*.email", "*.profile", "*.doc", "*.blob", "*.tags", "*.codes"]


def test_asyncpg_reads_masked_jsonb_bytea_and_arrays_in_binary(
    make_gateway: MakeGateway, kept: str
) -> None:
    gw = make_gateway(mask_columns=MASK_ALL)

    async def main() -> list[Any]:
        conn = await asyncpg.connect(gw.url())
        try:
            query = f"SELECT id, email, profile, doc, blob, tags, codes FROM {kept}"
            first = await conn.fetchrow(query)  # prepares (Describe statement), then binds
            again = await conn.fetchrow(query)  # the cached statement: Bind/Execute only
            return [tuple(first), tuple(again)]
        finally:
            await conn.close()

    rows = asyncio.run(main())
    expected = (1, MASKED, f'"{MASKED}"', f'"{MASKED}"', MASKED.encode(), [MASKED], [])
    assert rows == [expected, expected]


@pytest.mark.parametrize("binary", [True, False])
def test_psycopg_gets_typed_masked_values_in_both_formats(
    make_gateway: MakeGateway, kept: str, binary: bool
) -> None:
    gw = make_gateway(mask_columns=MASK_ALL)
    with psycopg.connect(gw.dsn(), autocommit=True) as conn:
        cur = conn.cursor(binary=binary)
        row = cur.execute(f"SELECT id, email, profile, blob, tags, codes FROM {kept}").fetchone()
    assert row == (1, MASKED, MASKED, MASKED.encode(), [MASKED], [])


# ------------------------------------------------------------------------------ bad input


def _logged_in(gw: RunningGateway) -> socket.socket:
    sock = socket.create_connection((gw.host, gw.port), timeout=10)
    sock.sendall(encode_startup({"user": "agent", "database": "x"}))
    sock.recv(65536)  # the password request
    sock.sendall(encode_password(gw.ticket.value.encode() + b"\0"))
    received = b""
    while not received.endswith(encode_ready("I")):
        received += sock.recv(65536)
    return sock


def _until_closed(sock: socket.socket) -> list[Message]:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    parser = BackendParser()
    parser.feed(data)
    return list(parser)


@pytest.mark.parametrize(
    "bad",
    [
        encode_password(b"again\0"),  # a login message after login: out of order
        b"\x7f" + struct.pack("!i", 8) + b"junk",  # an unknown message type
        b"Q" + struct.pack("!i", 4),  # a Query with no text at all
    ],
    ids=["password-after-login", "unknown-type", "empty-query-frame"],
)
def test_garbage_after_login_ends_that_connection_cleanly(
    gateway: RunningGateway, bad: bytes
) -> None:
    with _logged_in(gateway) as sock:
        sock.sendall(bad)
        messages = _until_closed(sock)
    assert isinstance(messages[-1], ErrorResponse) and messages[-1].sqlstate == "08P01"
    assert gateway.of_type("airlock.error")
    assert _alive_after(gateway)


def test_an_unparsable_statement_is_refused_recorded_and_the_session_goes_on(
    gateway: RunningGateway,
) -> None:
    with psycopg.connect(gateway.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="sql_unparsable"):
            conn.execute("SELEC 1 FROM")
        assert conn.execute("SELECT 2").fetchone() == (2,)
    rules = [d["rule_id"] for d in gateway.of_type("guardrail.decision")]
    assert "airlock.default.sql_unparsable" in rules


def test_a_masked_column_sent_as_null_comes_with_a_notice(
    make_gateway: MakeGateway, kept: str
) -> None:
    gw = make_gateway(mask_columns=["*.pin"])
    notices: list[str] = []
    with psycopg.connect(gw.dsn(), autocommit=True) as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        row = conn.execute(f"SELECT id, pin FROM {kept}").fetchone()
    assert row == (1, None)
    assert len(notices) == 1 and "pin" in notices[0] and "NULL" in notices[0]


def test_a_backslash_statement_pipelined_behind_a_running_one_is_refused(
    make_gateway: MakeGateway, upstream: Upstream, victims: str
) -> None:
    """The setting flipped by a function and the bypass sent in the same write: the gateway
    cannot know the state yet, so the statement whose reading depends on it is refused."""
    with upstream.superuser() as conn:
        conn.execute(
            "CREATE OR REPLACE FUNCTION public.flip() RETURNS text LANGUAGE sql AS "
            "$$ SELECT set_config('standard_conforming_strings', 'off', false) $$"
        )
    gw = make_gateway(rules=[NO_UNSCOPED])
    with _logged_in(gw) as sock:
        evil = f"SELECT 'x\\''; DELETE FROM {victims}; --'"
        sock.sendall(encode_query("SELECT public.flip()") + encode_query(evil))
        parser = BackendParser()
        ready = 0
        errors = []
        while ready < 2:
            parser.feed(sock.recv(65536))
            for message in parser:
                ready += isinstance(message, ReadyForQuery)
                if isinstance(message, ErrorResponse):
                    errors.append(message.message)
        sock.sendall(encode_message(b"X"))
    assert len(errors) == 1 and "parse_state" in errors[0]
    assert _count(upstream, victims) == 10


def _bind_execute(statement: str) -> bytes:
    bind = b"\0" + statement.encode() + b"\0" + struct.pack("!hhh", 0, 0, 0)
    execute = b"\0" + struct.pack("!i", 0)
    return encode_message(b"B", bind) + encode_message(b"E", execute) + encode_message(b"S")


def test_rows_of_a_statement_never_described_are_masked_and_our_describe_is_not_seen(
    gateway: RunningGateway,
) -> None:
    """A client that executes without any Describe: the gateway asks for the columns itself
    (masking goes by name) and keeps the answer to itself."""
    with _logged_in(gateway) as sock:
        sync = encode_message(b"S")
        sock.sendall(encode_parse("s", "SELECT email FROM users WHERE id = 1") + sync)
        sock.sendall(_bind_execute("s"))
        parser = BackendParser()
        messages: list[Message] = []
        while sum(isinstance(m, ReadyForQuery) for m in messages) < 2:
            parser.feed(sock.recv(65536))
            messages.extend(parser)
        sock.sendall(encode_message(b"X"))
    kinds = [m.raw[:1] for m in messages]
    assert kinds == [b"1", b"Z", b"2", b"D", b"C", b"Z"]  # no RowDescription reaches the client
    row = next(m for m in messages if isinstance(m, DataRow))
    assert row.values == (b"[MASKED:column]",)


def test_a_token_at_the_edge_of_a_value_is_value_masked(
    gateway: RunningGateway, upstream: Upstream, victims: str
) -> None:
    """A 65-byte value (its length's last byte is "A") starting with an AWS key id, and a key
    at the end of the last column with more rows after it: both masked."""
    key = "AKIA" + "ABCDEFGHIJKLMNOP"
    notes = [key + " " + "x" * 44, "note " + key, "plain"]
    with gateway_rows(upstream, victims, notes) as query:
        received = _raw_rows(gateway, query)
    assert key.encode() not in received
    assert received.count(b"[MASKED:aws-access-key-id]") == 2


@contextlib.contextmanager
def gateway_rows(upstream: Upstream, table: str, notes: list[str]) -> Iterator[str]:
    with upstream.superuser() as conn:
        conn.execute(f"ALTER TABLE {table} ADD COLUMN note text")
        for i, note in enumerate(notes, 1):
            conn.execute(f"UPDATE {table} SET note = %s WHERE id = %s", (note, i))
    yield f"SELECT id, note FROM {table} WHERE id <= {len(notes)} ORDER BY id"


def _raw_rows(gw: RunningGateway, query: str) -> bytes:
    with _logged_in(gw) as sock:
        sock.sendall(encode_query(query))
        received = b""
        while not received.endswith(encode_ready("I")):
            received += sock.recv(65536)
        sock.sendall(encode_message(b"X"))
    return received
