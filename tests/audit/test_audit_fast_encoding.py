"""The fast path for big output events writes exactly the bytes the json module would."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from airlock.audit._format import _SLOW_CONTROLS, _dump_data, _has_slow_controls

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
