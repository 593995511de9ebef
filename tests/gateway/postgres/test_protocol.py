"""The sans-I/O protocol parser: every message type, byte-at-a-time feeding, caps, fuzzing."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airlock.gateway.postgres.decode import decode_backend, decode_frontend
from airlock.gateway.postgres.encode import (
    encode_auth,
    encode_backend_key,
    encode_cancel,
    encode_data_row,
    encode_error,
    encode_message,
    encode_negotiate,
    encode_parse,
    encode_password,
    encode_query,
    encode_ready,
    encode_ssl_request,
    encode_startup,
)
from airlock.gateway.postgres.framing import (
    BACKEND_TYPES,
    FRONTEND_TYPES,
    BackendParser,
    Framer,
    FrontendParser,
)
from airlock.gateway.postgres.messages import (
    Bind,
    CancelRequest,
    Close,
    CopyData,
    CopyDone,
    CopyFail,
    DataRow,
    Describe,
    ErrorResponse,
    Execute,
    Flush,
    Message,
    Parse,
    PasswordMessage,
    ProtocolError,
    Query,
    RowDescription,
    SSLRequest,
    StartupMessage,
    Sync,
    Terminate,
)

FRONTEND_STREAM = b"".join(
    [
        encode_startup({"user": "agent", "database": "db", "application_name": "t"}),
        encode_password(b"ticket\0"),
        encode_query("SELECT 1; SELECT 'é'"),
        encode_parse("s1", "SELECT $1::int", (23,)),
        encode_message(
            b"B",
            b"p1\0s1\0"
            + struct.pack("!hh", 1, 0)
            + struct.pack("!h", 2)
            + struct.pack("!i", 1)
            + b"7"
            + struct.pack("!i", -1)
            + struct.pack("!hh", 1, 1),
        ),
        encode_message(b"D", b"Pp1\0"),
        encode_message(b"E", b"p1\0" + struct.pack("!i", 0)),
        encode_message(b"C", b"Ss1\0"),
        encode_message(b"H"),
        encode_message(b"S"),
        encode_message(b"d", b"1\t2\n"),
        encode_message(b"c"),
        encode_message(b"f", b"no more\0"),
        encode_message(b"X"),
    ]
)
EXPECTED_FRONTEND = [
    StartupMessage,
    PasswordMessage,
    Query,
    Parse,
    Bind,
    Describe,
    Execute,
    Close,
    Flush,
    Sync,
    CopyData,
    CopyDone,
    CopyFail,
    Terminate,
]

BACKEND_STREAM = b"".join(
    [
        encode_auth(10, b"SCRAM-SHA-256\0\0"),
        encode_auth(0),
        encode_message(b"S", b"server_version\x0015.1\0"),
        encode_backend_key(42, b"\1\2\3\4"),
        encode_ready("I"),
        encode_message(
            b"T",
            struct.pack("!h", 1) + b"email\0" + struct.pack("!IhIhih", 16384, 3, 25, -1, -1, 0),
        ),
        encode_data_row([b"a@b", None]),
        encode_message(b"C", b"SELECT 1\0"),
        encode_error("42501", "nope", hint="h"),
        encode_error("01000", "note", severity="NOTICE", notice=True),
        encode_message(b"G", b"\0" + struct.pack("!hh", 1, 0)),
        encode_message(b"H", b"\0" + struct.pack("!hh", 1, 0)),
        encode_message(b"d", b"row\n"),
        encode_message(b"c"),
        encode_message(b"I"),
        encode_negotiate(0, ("_pq_.x",)),
        encode_message(b"1"),
        encode_message(b"2"),
        encode_message(b"3"),
        encode_message(b"n"),
        encode_message(b"s"),
        encode_message(b"t", struct.pack("!hI", 1, 23)),
        encode_message(b"A", struct.pack("!i", 7) + b"chan\0payload\0"),
    ]
)


def _parse_all(parser: FrontendParser | BackendParser, data: bytes) -> list[Message]:
    parser.feed(data)
    return list(parser)


def _byte_at_a_time(parser: FrontendParser | BackendParser, data: bytes) -> list[Message]:
    out: list[Message] = []
    for i in range(len(data)):
        parser.feed(data[i : i + 1])
        out.extend(parser)
    return out


def test_frontend_messages_decode() -> None:
    messages = _parse_all(FrontendParser(), FRONTEND_STREAM)
    assert [type(m) for m in messages] == EXPECTED_FRONTEND
    startup, _, query, parse, bind = messages[:5]
    assert isinstance(startup, StartupMessage)
    assert startup.params["user"] == "agent"
    assert isinstance(query, Query) and query.sql == "SELECT 1; SELECT 'é'"
    assert isinstance(parse, Parse) and parse.param_types == (23,)
    assert isinstance(bind, Bind) and bind.params == (b"7", None)
    assert b"".join(m.raw for m in messages) == FRONTEND_STREAM  # raw is exact


def test_backend_messages_decode() -> None:
    messages = _parse_all(BackendParser(), BACKEND_STREAM)
    assert len(messages) == 23
    described = messages[5]
    assert isinstance(described, RowDescription)
    assert described.fields[0].name == "email" and described.fields[0].table_oid == 16384
    row = messages[6]
    assert isinstance(row, DataRow) and row.values == (b"a@b", None)
    error = messages[8]
    assert isinstance(error, ErrorResponse) and error.sqlstate == "42501"
    assert error.fields["H"] == "h"
    assert b"".join(m.raw for m in messages) == BACKEND_STREAM


def test_byte_at_a_time_gives_the_same_messages() -> None:
    whole = _parse_all(FrontendParser(), FRONTEND_STREAM)
    assert _byte_at_a_time(FrontendParser(), FRONTEND_STREAM) == whole
    whole_b = _parse_all(BackendParser(), BACKEND_STREAM)
    assert _byte_at_a_time(BackendParser(), BACKEND_STREAM) == whole_b


def test_startup_phase_special_packets() -> None:
    parser = FrontendParser()
    parser.feed(encode_ssl_request())
    assert isinstance(parser.next_message(), SSLRequest)
    assert parser.in_startup  # a startup packet still has to come
    parser.feed(encode_cancel(7, b"KEY!"))
    cancel = parser.next_message()
    assert isinstance(cancel, CancelRequest) and cancel.pid == 7 and cancel.key == b"KEY!"
    assert "KEY!" not in repr(cancel)  # the key is not in the repr


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (struct.pack("!i", 4) + b"", "startup packet length"),
        (struct.pack("!i", 20000), "startup packet length"),
        (struct.pack("!ii", 8, 2 << 16), "unsupported protocol version"),
        (struct.pack("!ii", 9, 3 << 16) + b"\0", "no user"),
        (struct.pack("!ii", 12, 3 << 16) + b"user", "unterminated"),
    ],
)
def test_bad_startup_packets_are_protocol_errors(data: bytes, reason: str) -> None:
    parser = FrontendParser()
    parser.feed(data)
    with pytest.raises(ProtocolError, match=reason):
        parser.next_message()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"Z" + struct.pack("!i", 5) + b"x", "unknown frontend message"),
        (b"Q" + struct.pack("!i", 3), "outside"),
        (b"Q" + struct.pack("!i", 2**30), "outside"),
        (b"Q" + struct.pack("!i", 6) + b"ab", "unterminated"),
        (b"S" + struct.pack("!i", 5) + b"x", "trailing"),
        (b"B" + struct.pack("!i", 8) + b"\0\0\xff\xff", "negative count"),
        (b"D" + struct.pack("!i", 6) + b"Xn", "target"),
    ],
)
def test_bad_messages_are_protocol_errors(data: bytes, reason: str) -> None:
    parser = FrontendParser()
    parser.in_startup = False
    parser.feed(data)
    with pytest.raises(ProtocolError, match=reason):
        parser.next_message()


def test_message_cap_is_checked_before_buffering_the_body() -> None:
    parser = FrontendParser(max_message=1024)
    parser.in_startup = False
    parser.feed(b"Q" + struct.pack("!i", 2048))  # only the header: refused already
    with pytest.raises(ProtocolError, match=r"outside 4\.\.1024"):
        parser.next_message()


def test_data_row_encoding_round_trips() -> None:
    values = (b"x" * 300, None, b"", b"\0\xff")
    parser = BackendParser()
    parser.feed(encode_data_row(values))
    row = parser.next_message()
    assert isinstance(row, DataRow) and row.values == values


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.booleans())
def test_garbage_only_ever_raises_protocol_error(data: bytes, startup: bool) -> None:
    for parser in (FrontendParser(max_message=4096), BackendParser(max_message=4096)):
        if isinstance(parser, FrontendParser):
            parser.in_startup = startup
        try:
            messages = _byte_at_a_time(parser, data)
        except ProtocolError:
            continue
        assert all(isinstance(m, Message) for m in messages)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 64))
def test_any_chunking_gives_the_same_messages(size: int) -> None:
    parser = BackendParser()
    out: list[Message] = []
    for i in range(0, len(BACKEND_STREAM), size):
        parser.feed(BACKEND_STREAM[i : i + size])
        out.extend(parser)
    assert out == _parse_all(BackendParser(), BACKEND_STREAM)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=60), st.integers(0, 200))
def test_mutated_valid_streams_raise_nothing_else(noise: bytes, at: int) -> None:
    position = at % len(BACKEND_STREAM)
    data = BACKEND_STREAM[:position] + noise + BACKEND_STREAM[position + len(noise) :]
    try:
        messages = _parse_all(BackendParser(max_message=4096), data)
    except ProtocolError:
        return
    assert all(isinstance(m, Message) for m in messages)


def _frames(framer: Framer, data: bytes, size: int) -> list[bytes]:
    out: list[bytes] = []
    for i in range(0, len(data), size):
        buf, frames = framer.split(data[i : i + size])
        out.extend(buf[start:end] for _, start, end in frames)
    return out


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 64))
def test_framer_delimits_what_the_parser_decodes_for_any_chunking(size: int) -> None:
    raws = _frames(Framer(BACKEND_TYPES), BACKEND_STREAM, size)
    assert raws == [m.raw for m in _parse_all(BackendParser(), BACKEND_STREAM)]
    assert [decode_backend(raw) for raw in raws] == _parse_all(BackendParser(), BACKEND_STREAM)


def test_framer_delimits_frontend_messages_after_startup() -> None:
    messages = _parse_all(FrontendParser(), FRONTEND_STREAM)[1:]  # the startup is untyped
    typed = b"".join(m.raw for m in messages)
    raws = _frames(Framer(FRONTEND_TYPES), typed, 7)
    assert [decode_frontend(raw) for raw in raws] == messages


def test_framer_holds_a_big_message_until_whole_and_checks_framing() -> None:
    big = encode_data_row([b"x" * 100_000])
    framer = Framer(BACKEND_TYPES)
    assert _frames(framer, big + encode_ready("I"), 1000) == [big, encode_ready("I")]
    with pytest.raises(ProtocolError, match="unknown message type"):
        Framer(BACKEND_TYPES).split(b"Q\0\0\0\4")
    with pytest.raises(ProtocolError, match="length"):
        Framer(BACKEND_TYPES, max_message=1024).split(b"D" + struct.pack("!i", 4096))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_framer_on_garbage_only_ever_raises_protocol_error(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        buf, frames = Framer(BACKEND_TYPES).split(data)
        for _, start, end in frames:
            message = decode_backend(buf[start:end])
            assert message.raw == bytes(buf[start:end])  # whole frames, decoded as they came


def _bind_body(draw: st.DrawFn) -> bytes:
    """A Bind body that is well formed more often than not (then cut or extended)."""
    names = st.binary(max_size=6).map(lambda b: b.replace(b"\0", b"") + b"\0")
    formats = draw(st.lists(st.integers(-2, 2), max_size=3))
    params = draw(st.lists(st.one_of(st.none(), st.binary(max_size=8)), max_size=3))
    body = draw(names) + draw(names) + struct.pack(f"!h{len(formats)}h", len(formats), *formats)
    body += struct.pack("!h", len(params))
    for value in params:
        size = -1 if value is None else len(value)
        size = draw(st.sampled_from([size, size, draw(st.integers(-3, 12))]))  # or a bad one
        body += struct.pack("!i", size) + (value or b"")
    results = draw(st.lists(st.integers(-2, 2), max_size=3))
    return body + struct.pack(f"!h{len(results)}h", len(results), *results)


@st.composite
def _extended_messages(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(b"BEDC"))
    if kind == ord("B"):
        body = _bind_body(draw)
    elif kind == ord("E"):
        body = draw(st.binary(max_size=6)).replace(b"\0", b"") + b"\0" + struct.pack("!i", 0)
    else:
        body = draw(st.sampled_from([b"S", b"P", b"X", b""])) + b"name\0"
    cut = draw(st.integers(0, len(body)))
    body = draw(st.sampled_from([body, body[:cut], body + draw(st.binary(max_size=3))]))
    if draw(st.booleans()):  # a corrupted byte: a length or count gone negative or too big
        at = draw(st.integers(0, max(len(body) - 1, 0)))
        body = body[:at] + bytes([draw(st.integers(0, 255))]) + body[at + 1 :]
    return bytes([kind]) + struct.pack("!i", len(body) + 4) + body


@settings(max_examples=600)
@given(_extended_messages())
def test_direct_decoders_match_the_reader_decoders(raw: bytes) -> None:
    """Bind/Describe/Execute/Close are decoded straight from the bytes on the relay's path:
    the same event, or the same error, as the reader-based decoders."""
    from airlock.gateway.postgres.decode import _FRONTEND, _decode

    try:
        expected: object = _decode(raw, _FRONTEND, "frontend")
    except ProtocolError as exc:
        expected = str(exc)
    try:
        got: object = decode_frontend(raw)
    except ProtocolError as exc:
        got = str(exc)
    assert got == expected
