"""The fast paths (big output events, small events) write exactly the bytes the json module would."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airlock.audit import SessionWriter
from airlock.audit._format import (
    _SLOW_CONTROLS,
    _dump_data,
    _fast_string,
    _has_slow_controls,
    _orjson_dumps,
    _replace_string,
    encode_line,
    encode_small,
    genesis,
    line_hash,
    surely_encodes,
)
from airlock.events import EventType

TEXT = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from(["\n", "\t", "\r", "\x1b", '"', "\\", "\x07", "\x00"]),
    ),
    min_size=0,
    max_size=64,
)


@settings(max_examples=200, deadline=None)
@given(prefix=TEXT, body=TEXT, stream=st.sampled_from(["stdout", "stderr", "pty"]), n=st.integers())
def test_same_bytes_as_the_json_module(prefix: str, body: str, stream: str, n: int) -> None:
    data = {"stream": stream, "text": prefix + "x" * 5000 + body, "n": n, "ok": True, "none": None}
    expected = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    assert _dump_data(data) == expected


@settings(max_examples=200, deadline=None)
@given(body=TEXT)
def test_the_replace_fallback_gives_the_json_modules_bytes(body: str) -> None:
    """Without orjson (``airlock-ci`` without ``[fast]``) the same bytes come from bytes.replace."""
    text = "x" * 5000 + body
    pieces = _replace_string(text)
    if pieces is not None:  # None: a control byte the json module then escapes
        assert b"".join(pieces) == json.dumps(text, ensure_ascii=False).encode("utf-8")


def test_every_code_point_is_escaped_as_the_json_module_does() -> None:
    text = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000)
    expected = json.dumps(text, ensure_ascii=False).encode("utf-8")
    pieces = _fast_string(text)
    assert pieces is not None and b"".join(pieces) == expected
    assert _replace_string(text) is None  # it holds \x00: the json module's turn


def test_orjson_is_used_when_installed() -> None:
    pytest.importorskip("orjson")
    assert _orjson_dumps() is not None
    assert _fast_string("a\udcff") is None  # a lone surrogate: the json module's ASCII escapes


def test_lone_surrogates_still_fall_back_to_ascii_escapes() -> None:
    data = {"text": "a" * 5000 + "\udcff"}
    assert json.loads(_dump_data(data)) == data


@settings(max_examples=300, deadline=None)
@given(data=st.binary(min_size=0, max_size=300))
def test_both_control_detectors_agree(data: bytes) -> None:
    """hyperscan (when installed) and bytes.translate find the same slow control bytes."""
    by_translate = len(data.translate(None, _SLOW_CONTROLS)) != len(data)
    assert _has_slow_controls(data) == by_translate
    padded = b"x" * 5000 + data + b"y" * 5000
    assert _has_slow_controls(padded) == by_translate


def test_each_slow_control_byte_is_found() -> None:
    for byte in range(256):
        data = b"a" * 100 + bytes([byte]) + b"b" * 100
        assert _has_slow_controls(data) == (byte < 32 and byte not in (9, 10, 13, 27))


VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(data=st.dictionaries(TEXT, VALUES, max_size=6))
def test_small_events_encode_as_the_json_module_does(data: dict[str, object]) -> None:
    text = encode_small(data)
    assert text is not None
    assert text.encode("utf-8") == _dump_data(data)
    assert json.loads(text) == json.loads(_dump_data(data))


def test_small_encoding_leaves_big_strings_to_the_fast_path() -> None:
    assert encode_small({"stream": "stdout", "text": "x" * 5000}) is None
    assert encode_small({"text": "x" * 4095}) == '{"text":"' + "x" * 4095 + '"}'


def test_small_encoding_escapes_lone_surrogates_and_refuses_what_json_refuses() -> None:
    assert encode_small({"argv": ["a\udcffé"]}) == '{"argv":["a\\udcff\\u00e9"]}'
    with pytest.raises(ValueError, match="not JSON compliant"):
        encode_small({"x": float("nan")})
    with pytest.raises(TypeError, match="not JSON serializable"):
        encode_small({"x": object()})


@settings(max_examples=100, deadline=None)
@given(events=st.lists(st.dictionaries(TEXT, VALUES, max_size=4), min_size=1, max_size=5))
def test_written_lines_are_the_documented_layout(events: list[dict[str, object]]) -> None:
    """The writer's one-pass line for small events is byte for byte encode_line's."""
    with tempfile.TemporaryDirectory() as tmp:
        writer = SessionWriter.create(Path(tmp))
        for i, data in enumerate(events):
            writer.append(EventType.DB_QUERY if i % 2 else "custom.type-1:x", data)
        writer.close()
        lines = writer.events_path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    prev = genesis(writer.session_id)
    for seq, (raw, data) in enumerate(zip(lines[:-1], events, strict=True)):
        parsed = json.loads(raw)
        type_ = "db.query" if seq % 2 else "custom.type-1:x"
        assert raw == encode_line(seq, parsed["ts"], type_, prev, data)
        prev = line_hash(raw)


@settings(max_examples=300, deadline=None)
@given(data=st.dictionaries(TEXT, VALUES, max_size=4), body=TEXT, key=TEXT)
def test_what_surely_encodes_encodes_as_the_json_module_does(
    data: dict[str, object], body: str, key: str
) -> None:
    """The writer's thread escapes such data later: it must never fail there."""
    data = {**data, key: "x" * 5000 + body}
    if surely_encodes(data):
        assert json.loads(_dump_data(data)) == data
    else:
        assert any(
            not isinstance(v, str | int | None) or isinstance(v, float) for v in data.values()
        )


def test_surely_encodes_wants_a_big_text_and_plain_values() -> None:
    assert surely_encodes({"stream": "stdout", "text": "x" * 5000 + "\udcff", "n": 1})
    assert not surely_encodes({"stream": "stdout", "text": "x" * 100})
    assert not surely_encodes({"text": "x" * 5000, "f": 1.0})
    assert not surely_encodes({"text": "x" * 5000, 1: "a"})
