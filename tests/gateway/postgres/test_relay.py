"""The sans-I/O relay fed byte by byte and in arbitrary pieces: the same bytes go out, the same
events are recorded, the same statements are held, as when everything comes in one piece."""

from __future__ import annotations

import itertools
import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from airlock.gateway.postgres._shared import Shared, UpstreamLogin
from airlock.gateway.postgres.encode import (
    encode_data_row,
    encode_message,
    encode_parse,
    encode_query,
    encode_ready,
)
from airlock.gateway.postgres.framing import BackendParser
from airlock.gateway.postgres.guard import SqlGuard
from airlock.gateway.postgres.masking import ColumnMasker
from airlock.gateway.postgres.messages import DataRow
from airlock.gateway.postgres.relay import Relay
from airlock.gateway.tickets import Ticket
from airlock.mask import Masker, MaskSettings
from airlock.policy.gateways import PostgresGatewayConfig
from airlock.policy.guardrails import Decision, GuardrailDefaults, GuardrailRule

SECRET = "sk_live_" + "R" * 24
CONFIG = PostgresGatewayConfig.model_validate(
    {
        "name": "appdb",
        "kind": "postgres",
        "upstream": {"host": "127.0.0.1", "port": 5432, "database": "app", "tls": "disable"},
        "credential": {"env": {"user": "U", "password": "P"}},
        "mask_columns": ["*.email"],
    }
)
RULES = [
    GuardrailRule.model_validate(r)
    for r in (
        {"id": "no-drop", "sql": {"kinds": ["drop"]}, "action": "deny"},
        {"id": "ok-update", "sql": {"kinds": ["update"]}, "action": "require_approval"},
    )
]


def _relay(events: list[tuple[str, dict[str, Any]]]) -> Relay:
    def record(type_: str, data: Any) -> int:
        events.append((str(type_), dict(data)))
        return len(events)

    shared = Shared(
        config=CONFIG,
        login=UpstreamLogin("u", "p"),
        masker=Masker(MaskSettings(literals=(("env:SECRET", SECRET),))),
        record=record,
        approve=lambda _: False,
        ticket=Ticket.issue("s", "appdb"),
        guard=SqlGuard(RULES, GuardrailDefaults(), "appdb"),
        columns=ColumnMasker(CONFIG.mask_columns),
        startup_timeout=1.0,
    )
    relay = Relay(shared, "c1")
    relay.nonce = "n0"  # refusal tokens are random otherwise
    return relay


def _bind(portal: str, statement: str, params: list[bytes]) -> bytes:
    body = portal.encode() + b"\0" + statement.encode() + b"\0" + struct.pack("!hh", 0, len(params))
    body += b"".join(struct.pack("!i", len(p)) + p for p in params)
    return encode_message(b"B", body + struct.pack("!h", 0))


def _execute(portal: str = "") -> bytes:
    return encode_message(b"E", portal.encode() + b"\0" + struct.pack("!i", 0))


SYNC = encode_message(b"S")
MESSAGES = [
    encode_query("SELECT 1"),
    encode_query("DROP TABLE t"),
    encode_query(f"SELECT '{SECRET}'"),
    encode_query("UPDATE t SET a = 1 WHERE id = 2"),
    encode_query("SET standard_conforming_strings = off"),
    encode_parse("s1", "UPDATE t SET a = $1 WHERE id = $2")
    + _bind("", "s1", [b"x", b"1"])
    + _execute()
    + SYNC,
    encode_parse("", "SELECT email FROM users") + _bind("", "", []) + _execute() + SYNC,
    encode_message(b"D", b"Ss1\0") + SYNC,
    encode_message(b"H"),
]


def _run(relay: Relay, chunks: list[bytes], answers: list[bool]) -> tuple[bytes, int]:
    """Feed ``chunks``; answer each hold from ``answers`` (cycled). Bytes sent upstream and how
    many holds there were."""
    out = b""
    holds = 0
    for chunk in chunks:
        step = relay.client_data(chunk)
        out += step.upstream
        while step.hold is not None:
            approve = answers[holds % len(answers)]
            holds += 1
            decision = Decision("allow" if approve else "deny", step.hold.verdict.final.rule_id)
            step = relay.decided(decision)
            out += step.upstream
    return out, holds


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


@settings(max_examples=60, deadline=None)
@given(
    picks=st.lists(st.integers(0, len(MESSAGES) - 1), min_size=1, max_size=8),
    cuts=st.lists(st.integers(0, 10_000), max_size=12),
    answers=st.lists(st.booleans(), min_size=1, max_size=4),
)
def test_any_split_gives_what_one_piece_gives(
    picks: list[int], cuts: list[int], answers: list[bool]
) -> None:
    data = b"".join(MESSAGES[i] for i in picks)
    whole_events: list[tuple[str, dict[str, Any]]] = []
    split_events: list[tuple[str, dict[str, Any]]] = []
    whole = _run(_relay(whole_events), [data], answers)
    split = _run(_relay(split_events), _split(data, cuts), answers)
    assert split == whole
    assert split_events == whole_events


def test_byte_by_byte_gives_what_one_piece_gives() -> None:
    data = b"".join(MESSAGES)
    whole_events: list[tuple[str, dict[str, Any]]] = []
    byte_events: list[tuple[str, dict[str, Any]]] = []
    whole = _run(_relay(whole_events), [data], [True, False])
    one_by_one = _run(
        _relay(byte_events), [data[i : i + 1] for i in range(len(data))], [True, False]
    )
    assert one_by_one == whole
    assert byte_events == whole_events
    sent, holds = whole
    assert holds == 2  # the simple UPDATE, and the extended one at its Execute
    assert b"DROP TABLE" not in sent and b"standard_conforming_strings" not in sent
    assert SECRET not in str(whole_events)


def _row_description(*names: str) -> bytes:
    body = struct.pack("!h", len(names))
    for name in names:
        body += name.encode() + b"\0" + struct.pack("!ihihih", 0, 0, 25, -1, -1, 0)
    return encode_message(b"T", body)


def test_results_fed_byte_by_byte_are_masked_like_one_piece() -> None:
    backend = (
        _row_description("id", "email", "note")
        + encode_data_row([b"1", b"a@example.com", f"key {SECRET}".encode()])
        + encode_data_row([b"2", None, b"plain"])
        + encode_message(b"A", struct.pack("!i", 7) + b"ch\0" + SECRET.encode() + b"\0")
        + encode_message(b"C", b"SELECT 2\0")
        + encode_ready("I")
    )
    outs = []
    for chunks in ([backend], [backend[i : i + 1] for i in range(len(backend))]):
        relay = _relay([])
        relay.client_data(encode_query("SELECT id, email, note FROM users"))
        outs.append(b"".join(relay.results.feed(c) for c in chunks))
    assert outs[0] == outs[1]
    assert b"a@example.com" not in outs[0] and SECRET.encode() not in outs[0]
    assert b"[MASKED:column]" in outs[0] and b"[MASKED:env:SECRET]" in outs[0]


@settings(max_examples=80, deadline=None)
@given(
    rows=st.lists(
        st.lists(st.one_of(st.none(), st.binary(max_size=40)), min_size=3, max_size=3),
        min_size=1,
        max_size=20,
    )
)
def test_the_fast_row_path_masks_exactly_like_decode_and_encode(
    rows: list[list[bytes | None]],
) -> None:
    """Rows with an ``email`` column: the run-at-once path equals per-row decode → replace →
    encode."""
    backend = _row_description("id", "email", "note") + b"".join(encode_data_row(r) for r in rows)
    relay = _relay([])
    relay.s.config = relay.s.config.model_copy(update={"mask_values": False})
    relay.client_data(encode_query("SELECT id, email, note FROM users"))
    got = relay.results.feed(backend)
    expected = [[r[0], None if r[1] is None else b"[MASKED:column]", r[2]] for r in rows]
    parser = BackendParser()
    parser.feed(got)
    decoded = [list(m.values) for m in parser if isinstance(m, DataRow)]
    assert decoded == expected


def test_value_masking_sees_tokens_at_either_edge_of_a_value() -> None:
    """A token at the start of a value whose length byte is a letter, and at the end of the
    last column with another row after it: both masked (a scan of the raw rows missed them)."""
    key = "AKIA" + "ABCDEFGHIJKLMNOP"
    leading = (key + " " + "x" * 44).encode()  # 65 bytes: its length's last byte is "A"
    rows = [[b"1", leading], [b"2", ("note " + key).encode()], [b"3", b"plain"]]
    backend = _row_description("id", "note") + b"".join(encode_data_row(r) for r in rows)
    relay = _relay([])
    relay.client_data(encode_query("SELECT id, note FROM notes"))
    out = relay.results.feed(backend)
    assert key.encode() not in out
    assert out.count(b"[MASKED:aws-access-key-id]") == 2
