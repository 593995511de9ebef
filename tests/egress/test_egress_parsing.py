"""The sans-I/O parsers fed one byte at a time and in random pieces: request heads (CONNECT and
absolute-form), chunked bodies, and TLS ClientHellos made by Python's real TLS stack."""

from __future__ import annotations

import itertools
import ssl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airlock.egress.protocol import BodyFramer, HeadParser, ProxyProtocolError, RequestHead
from airlock.egress.tls import ClientHello, ClientHelloReader

_REQUESTS = [
    b"CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com:443\r\n\r\n",
    b"CONNECT [::1]:8443 HTTP/1.1\r\n\r\n",
    b"GET http://web.example/pub/a?b=1 HTTP/1.1\r\nHost: other\r\nAccept: */*\r\n\r\n",
    b"POST http://web.example:8080/up HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc",
]


def _feed_in_pieces(data: bytes, cuts: list[int]) -> tuple[object, bytes]:
    parser = HeadParser()
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    head = None
    for start, end in itertools.pairwise(points):
        if head is None:
            head = parser.feed(data[start:end])
            rest = parser.rest
        else:
            rest += data[start:end]
    return head, rest


@pytest.mark.parametrize("raw", _REQUESTS)
def test_one_byte_at_a_time_equals_all_at_once(raw: bytes) -> None:
    whole = HeadParser()
    expected = whole.feed(raw)
    parser = HeadParser()
    got = None
    for i in range(len(raw)):
        got = parser.feed(raw[i : i + 1])
        if got is not None:
            assert i == raw.index(b"\r\n\r\n") + 3
            break
    assert got == expected and isinstance(got, RequestHead)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(_REQUESTS), st.lists(st.integers(min_value=0, max_value=500)))
def test_any_split_gives_the_same_head_and_rest(raw: bytes, cuts: list[int]) -> None:
    whole = HeadParser()
    expected = whole.feed(raw)
    head, rest = _feed_in_pieces(raw, cuts)
    assert head == expected and rest == whole.rest


def test_parsed_targets() -> None:
    connect = HeadParser().feed(_REQUESTS[0])
    assert isinstance(connect, RequestHead)
    assert (connect.host, connect.port, connect.path, connect.is_connect) == (
        "api.example.com",
        443,
        None,
        True,
    )
    v6 = HeadParser().feed(_REQUESTS[1])
    assert isinstance(v6, RequestHead) and (v6.host, v6.port) == ("::1", 8443)
    plain = HeadParser().feed(_REQUESTS[2])
    assert isinstance(plain, RequestHead)
    assert (plain.host, plain.port, plain.path) == ("web.example", 80, "/pub/a?b=1")


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /relative HTTP/1.1\r\n\r\n",
        b"CONNECT example.com HTTP/1.1\r\n\r\n",
        b"CONNECT example.com:99999 HTTP/1.1\r\n\r\n",
        b"GET http://user:pw@example.com/ HTTP/1.1\r\n\r\n",
        b"GET http://example.com/ HTTP/2.0\r\n\r\n",
        b"GET http://example.com/ HTTP/1.1\r\nBad Header: x\r\n\r\n",
        b"GET http://example.com/ HTTP/1.1\r\nX: a\r\n folded\r\n\r\n",
        b"GET  http://example.com/ HTTP/1.1\r\n\r\n",
    ],
)
def test_malformed_heads_are_refused(raw: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        HeadParser().feed(raw)


def test_oversized_head_is_refused_before_it_ends() -> None:
    parser = HeadParser()
    parser.feed(b"GET http://example.com/ HTTP/1.1\r\n")
    for _ in range(32):
        assert parser.feed(b"X-Pad: " + b"a" * 1000 + b"\r\n") is None
    with pytest.raises(ProxyProtocolError, match="32 KiB"):
        parser.feed(b"X-Pad: " + b"a" * 1000 + b"\r\n")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_only_ever_raises_the_protocol_error(data: bytes) -> None:
    try:
        HeadParser().feed(data)
        HeadParser(response=True).feed(data)
    except ProxyProtocolError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=40), max_size=6), st.binary(max_size=20))
def test_chunked_body_ends_exactly_where_it_should(chunks: list[bytes], after: bytes) -> None:
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c) + b"0\r\nX-T: 1\r\n\r\n"
    framer = BodyFramer("chunked")
    stream = body + after
    used_total = 0
    for i in range(len(stream)):
        used, done = framer.feed(stream[i : i + 1])
        used_total += used
        if done:
            break
    assert used_total == len(body) and framer.done


def _client_hello(server_name: str | None) -> bytes:
    context = ssl.create_default_context()
    if server_name is None:
        context.check_hostname = False
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize("name", ["api.example.com", "a-b.c_d.example", None])
def test_client_hello_fed_byte_by_byte(name: str | None) -> None:
    hello = _client_hello(name)
    reader = ClientHelloReader()
    results = [reader.feed(hello[i : i + 1]) for i in range(len(hello))]
    assert all(r is None for r in results[:-1])
    assert results[-1] == ClientHello(tls=True, sni=name)


def test_client_hello_split_over_two_records() -> None:
    hello = _client_hello("split.example")
    body = hello[5:]
    first, second = body[:40], body[40:]
    records = (
        b"\x16\x03\x01" + len(first).to_bytes(2, "big") + first
        + b"\x16\x03\x01" + len(second).to_bytes(2, "big") + second
    )  # fmt: skip
    assert ClientHelloReader().feed(records) == ClientHello(tls=True, sni="split.example")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_garbage_hello_never_raises(data: bytes) -> None:
    result = ClientHelloReader().feed(b"\x16\x03\x01" + data)
    assert result is None or isinstance(result, ClientHello)
    assert ClientHelloReader().feed(b"GET / HTTP/1.1\r\n") == ClientHello(tls=False)


def test_a_hello_in_one_byte_records_is_read_once_not_per_feed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A hostile client splits its ClientHello into 1-byte records and sends them a few at a
    time: the reader walked every record again on each feed (quadratic: 6.9 s of the proxy's
    event loop for 64 KiB, found by review). Each record header is now read once."""
    import airlock.egress.tls as tls

    hello = _client_hello("records.example")
    body = hello[5:]
    records = b"".join(b"\x16\x03\x01\x00\x01" + body[i : i + 1] for i in range(len(body)))
    reads = 0
    real_u16 = tls._u16

    def counting(data: bytes | bytearray, at: int) -> int:
        nonlocal reads
        reads += 1
        return real_u16(data, at)

    monkeypatch.setattr(tls, "_u16", counting)
    reader = ClientHelloReader()
    results = [reader.feed(records[i : i + 48]) for i in range(0, len(records), 48)]
    assert results[-1] == ClientHello(tls=True, sni="records.example")
    assert reads <= len(body) + len(results)  # one header read per record (and per feed)
