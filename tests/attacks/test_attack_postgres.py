"""Attacks on the PostgreSQL gateway that the earlier reviews did not name, each over a real
socket to a real PostgreSQL behind a real gateway.

The extended protocol binds a portal to the statement *as it was at Bind*: PostgreSQL keeps the
portal's plan when the statement it came from is parsed again or closed. A relay that looks the
portal's SQL up by statement name at Execute time judges what the name holds *now*.
"""

from __future__ import annotations

import secrets
import socket
import struct
from collections.abc import Iterator

import psycopg
import pytest
from tests.gateway.postgres.conftest import (  # noqa: F401 (fixtures)
    APP_USER,
    MakeGateway,
    RunningGateway,
    Upstream,
    make_gateway,
    upstream,
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
from airlock.gateway.postgres.messages import DataRow, ErrorResponse, Message

pytestmark = pytest.mark.service

RULES = [{"id": "delete-needs-ok", "sql": {"kinds": ["delete"]}, "action": "require_approval"}]


@pytest.fixture
def victims(upstream: Upstream) -> Iterator[str]:  # noqa: F811
    name = f"victims_{secrets.token_hex(3)}"
    with upstream.superuser() as conn:
        conn.execute(f"CREATE TABLE {name} AS SELECT i AS id FROM generate_series(1, 10) i")
        conn.execute(f"ALTER TABLE {name} OWNER TO {APP_USER}")
    yield name
    with upstream.superuser() as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")


def _count(upstream: Upstream, table: str) -> int:  # noqa: F811
    with upstream.superuser() as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def _logged_in(gw: RunningGateway) -> socket.socket:
    sock = socket.create_connection((gw.host, gw.port), timeout=20)
    sock.sendall(encode_startup({"user": "agent", "database": "x"}))
    sock.recv(65536)  # the password request
    sock.sendall(encode_password(gw.ticket.value.encode() + b"\0"))
    _until_ready(sock)
    return sock


def _until_ready(sock: socket.socket) -> bytes:
    received = b""
    while not (received.endswith(encode_ready("I")) or received.endswith(encode_ready("E"))):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def _bind(portal: str, statement: str) -> bytes:
    body = portal.encode() + b"\0" + statement.encode() + b"\0"
    body += struct.pack("!hhh", 0, 0, 0)  # no parameter formats, no parameters, result formats
    return encode_message(b"B", body)


def _execute(portal: str) -> bytes:
    return encode_message(b"E", portal.encode() + b"\0" + struct.pack("!i", 0))


def _close(target: bytes, name: str) -> bytes:
    return encode_message(b"C", target + name.encode() + b"\0")


SYNC = encode_message(b"S")


def _run(gw: RunningGateway, *messages: bytes) -> bytes:
    with _logged_in(gw) as sock:
        sock.sendall(b"".join(messages) + SYNC)
        received = _until_ready(sock)
        sock.sendall(encode_message(b"X"))
    return received


def test_a_held_statement_is_held_when_the_unnamed_statement_is_parsed_again(
    make_gateway: MakeGateway,  # noqa: F811
    upstream: Upstream,  # noqa: F811
    victims: str,
) -> None:
    """Parse "" = DELETE (held at Execute), Bind p, Parse "" = SELECT 1, Execute p: the server
    runs the DELETE (the portal keeps its plan), so the portal must be judged by its Bind."""
    gw = make_gateway(rules=RULES)
    received = _run(
        gw,
        encode_parse("", f"DELETE FROM {victims}"),
        _bind("p", ""),
        encode_parse("", "SELECT 1"),
        _execute("p"),
    )
    assert _count(upstream, victims) == 10, received
    assert gw.approvals != [], received  # it was asked (and the approver said no)


def test_a_held_statement_is_held_when_its_named_statement_is_closed(
    make_gateway: MakeGateway,  # noqa: F811
    upstream: Upstream,  # noqa: F811
    victims: str,
) -> None:
    """Parse s = DELETE, Bind p to s, Close s, Execute p: the gateway forgot s and judged ""."""
    gw = make_gateway(rules=RULES)
    received = _run(
        gw,
        encode_parse("s", f"DELETE FROM {victims}"),
        _bind("p", "s"),
        _close(b"S", "s"),
        _execute("p"),
    )
    assert _count(upstream, victims) == 10, received
    assert gw.approvals != [], received  # it was asked (and the approver said no)


def _describe_statement(name: str) -> bytes:
    return encode_message(b"D", b"S" + name.encode() + b"\0")


def test_a_masked_column_stays_masked_when_the_statement_is_parsed_again(
    make_gateway: MakeGateway,  # noqa: F811
) -> None:
    """Parse "" = SELECT password, Bind p, Parse "" = SELECT 'x' AS id, Describe S "",
    Execute p: the rows are the passwords, the gateway must not mask them by the new columns."""
    gw = make_gateway()  # mask_columns: *.password
    received = _run(
        gw,
        encode_parse("", "SELECT password FROM users WHERE id = 1"),
        _bind("p", ""),
        encode_parse("", "SELECT 'x'::text AS id"),
        _describe_statement(""),
        _execute("p"),
    )
    rows = [m for m in _messages(received) if isinstance(m, DataRow)]
    assert len(rows) == 1, received
    assert b"pw1" not in received, rows


def _messages(data: bytes) -> list[Message]:
    parser = BackendParser()
    parser.feed(data)
    out = []
    while (message := parser.next_message()) is not None:
        out.append(message)
    return out


def test_a_held_statement_is_held_when_a_failed_parse_reuses_its_name(
    make_gateway: MakeGateway,  # noqa: F811
    upstream: Upstream,  # noqa: F811
    victims: str,
) -> None:
    """Parse s = DELETE; Parse s = SELECT 1 (the server refuses it: s already exists); Bind p
    to s, Execute p: the server runs the DELETE, so a refused Parse must not rename s."""
    gw = make_gateway(rules=RULES)
    with _logged_in(gw) as sock:
        sock.sendall(encode_parse("s", f"DELETE FROM {victims}") + SYNC)
        _until_ready(sock)
        sock.sendall(encode_parse("s", "SELECT 1") + SYNC)
        _until_ready(sock)
        sock.sendall(_bind("p", "s") + _execute("p") + SYNC)
        received = _until_ready(sock)
        sock.sendall(encode_message(b"X"))
    assert _count(upstream, victims) == 10, received
    assert gw.approvals != [], received


def test_a_held_statement_is_held_when_the_server_skips_the_parse_that_replaced_it(
    make_gateway: MakeGateway,  # noqa: F811
    upstream: Upstream,  # noqa: F811
    victims: str,
) -> None:
    """Parse "" = DELETE; then a batch whose first message fails (Bind of an unknown statement)
    so the server skips the Parse "" = SELECT 1 after it; then Bind p to "", Execute p: the
    server still holds the DELETE as the unnamed statement."""
    gw = make_gateway(rules=RULES)
    with _logged_in(gw) as sock:
        sock.sendall(encode_parse("", f"DELETE FROM {victims}") + SYNC)
        _until_ready(sock)
        sock.sendall(_bind("x", "no_such_statement") + encode_parse("", "SELECT 1") + SYNC)
        _until_ready(sock)
        sock.sendall(_bind("p", "") + _execute("p") + SYNC)
        received = _until_ready(sock)
        sock.sendall(encode_message(b"X"))
    assert _count(upstream, victims) == 10, received
    assert gw.approvals != [], received


@pytest.mark.parametrize("action", ["deny", "require_approval"])
def test_a_statement_prepared_in_sql_is_judged_when_a_protocol_bind_runs_it(
    make_gateway: MakeGateway,  # noqa: F811
    upstream: Upstream,  # noqa: F811
    victims: str,
    action: str,
) -> None:
    """SQL ``PREPARE s AS DELETE …`` and protocol-level named statements share one namespace:
    Bind p to "s" and Execute p runs the DELETE, whatever the gateway thought "s" was."""
    gw = make_gateway(rules=[{"id": "no-delete", "sql": {"kinds": ["delete"]}, "action": action}])
    with _logged_in(gw) as sock:
        sock.sendall(encode_query(f"PREPARE s AS DELETE FROM {victims}"))
        prepared = _until_ready(sock)
        sock.sendall(_bind("p", "s") + _execute("p") + SYNC)
        received = _until_ready(sock)
        sock.sendall(encode_message(b"X"))
    assert _count(upstream, victims) == 10, (prepared, received)


def test_each_protocol_execution_of_a_sql_prepared_statement_asks_again(
    make_gateway: MakeGateway,  # noqa: F811
    upstream: Upstream,  # noqa: F811
    victims: str,
) -> None:
    """One approval is one execution: SQL ``EXECUTE s`` asks again, and so must a protocol
    Bind/Execute of the same SQL-prepared statement (the approver said yes to the PREPARE)."""
    gw = make_gateway(rules=RULES, approve=lambda op: True)
    with _logged_in(gw) as sock:
        sock.sendall(encode_query(f"PREPARE s AS DELETE FROM {victims} WHERE id = 1"))
        _until_ready(sock)
        asked_for_prepare = len(gw.approvals)
        sock.sendall(_bind("p", "s") + _execute("p") + SYNC)
        received = _until_ready(sock)
        sock.sendall(encode_message(b"X"))
    assert asked_for_prepare == 1
    assert len(gw.approvals) == 2, received  # the execution was asked for too


def test_a_masked_column_stays_masked_when_a_sql_cursor_is_executed_as_a_portal(
    make_gateway: MakeGateway,  # noqa: F811
) -> None:
    """``DECLARE c CURSOR FOR SELECT password …`` makes a portal the client can Execute over the
    extended protocol with no Bind: the gateway has no columns for it, and must not pass its
    rows unmasked (``FETCH`` in SQL is masked)."""
    gw = make_gateway()  # mask_columns: *.password
    with _logged_in(gw) as sock:
        sock.sendall(encode_query("BEGIN; DECLARE c CURSOR FOR SELECT password FROM users"))
        _until_ready_in_transaction(sock)
        sock.sendall(_execute("c") + SYNC)
        received = _until_ready_in_transaction(sock)
        sock.sendall(encode_message(b"X"))
    rows = [m for m in _messages(received) if isinstance(m, DataRow)]
    assert rows, received
    assert b"pw1" not in received


def _until_ready_in_transaction(sock: socket.socket) -> bytes:
    received = b""
    while not received.endswith(encode_ready("T")) and not received.endswith(encode_ready("E")):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def test_an_execute_of_no_portal_fails_cleanly_and_the_connection_stays_usable(
    make_gateway: MakeGateway,  # noqa: F811
) -> None:
    gw = make_gateway()
    with _logged_in(gw) as sock:
        sock.sendall(_execute("nothing") + SYNC)
        failed = _until_ready(sock)
        sock.sendall(encode_query("SELECT 40 + 2"))
        answered = _until_ready(sock)
        sock.sendall(encode_message(b"X"))
    errors = [m for m in _messages(failed) if isinstance(m, ErrorResponse)]
    assert len(errors) == 1 and b"34000" in errors[0].raw, failed  # invalid_cursor_name
    assert [m for m in _messages(answered) if isinstance(m, DataRow)] != []


def test_copy_from_stdin_is_an_insert_for_the_guardrails(
    make_gateway: MakeGateway,  # noqa: F811
    upstream: Upstream,  # noqa: F811
) -> None:
    """A rule that holds INSERTs into audit.* must hold ``COPY audit.log FROM STDIN`` too: it
    writes the same rows (psycopg's ``cursor.copy``, psql's ``\\copy``)."""
    gw = make_gateway(
        rules=[{"id": "audit-ok", "sql": {"kinds": ["insert"], "tables": ["audit.*"]},
                "action": "require_approval"}]
    )  # fmt: skip
    marker = secrets.randbelow(10**9) + 10**9
    with (
        psycopg.connect(gw.dsn(), autocommit=True) as conn,
        pytest.raises(psycopg.Error),
        conn.cursor().copy("COPY audit.log (id, msg) FROM STDIN") as copy,
    ):
        copy.write_row((marker, "written by COPY"))
    with upstream.superuser() as conn:
        row = conn.execute("SELECT count(*) FROM audit.log WHERE id = %s", (marker,)).fetchone()
    assert row == (0,)
    assert [op.rule_id for op in gw.approvals] == ["audit-ok"]


def test_a_name_deallocated_in_sql_and_prepared_again_is_judged_by_what_it_holds_now(
    make_gateway: MakeGateway,  # noqa: F811
    upstream: Upstream,  # noqa: F811
    victims: str,
) -> None:
    """Parse s = SELECT 1 (protocol); DEALLOCATE s and PREPARE s AS DELETE … in SQL (one
    approval); then Bind/Execute s over the protocol must ask again, not run as SELECT 1."""
    gw = make_gateway(rules=RULES, approve=lambda op: True)
    with _logged_in(gw) as sock:
        sock.sendall(encode_parse("s", "SELECT 1") + SYNC)
        _until_ready(sock)
        sock.sendall(encode_query(f"DEALLOCATE s; PREPARE s AS DELETE FROM {victims} WHERE id = 1"))
        _until_ready(sock)
        asked_for_prepare = len(gw.approvals)
        sock.sendall(_bind("p", "s") + _execute("p") + SYNC)
        received = _until_ready(sock)
        sock.sendall(encode_message(b"X"))
    assert asked_for_prepare == 1
    assert len(gw.approvals) == 2, received
