"""The fast path for big output events writes exactly the bytes the json module would."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from airlock.audit._format import _dump_data

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
