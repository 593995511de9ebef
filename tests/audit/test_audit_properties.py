"""Properties: any change to a sealed log is caught; structural edits get the right name."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airlock.audit import SessionWriter, SigningKey, _scan, iter_events, verify_session
from airlock.errors import VerificationFailed

SCRATCH = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
KEY = SigningKey.generate()
TRUSTED = {KEY.key_id: KEY.public_key}
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
event_data = st.dictionaries(st.text(max_size=10), json_values, max_size=5)


@contextmanager
def sealed(datas: list[dict[str, Any]]) -> Iterator[Path]:
    # tmpfs when there is one: each example fsyncs its seal, which is slow on a busy disk.
    with tempfile.TemporaryDirectory(dir=SCRATCH) as tmp:
        writer = SessionWriter.create(Path(tmp))
        for data in datas:
            writer.append("output", data)
        writer.seal(KEY, exit_code=0)
        yield writer.path


def rewrite(session: Path, lines: list[bytes]) -> None:
    (session / "events.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))


def kind_of(session: Path) -> tuple[str, int | None]:
    try:
        verify_session(session, TRUSTED)
    except VerificationFailed as exc:
        return exc.kind, exc.line
    return "ok", None


@SETTINGS
@given(st.lists(event_data, min_size=1, max_size=6))
def test_any_data_round_trips_and_verifies(datas: list[dict[str, Any]]) -> None:
    with sealed(datas) as session:
        assert [e["data"] for e in iter_events(session)] == datas
        assert verify_session(session, TRUSTED).event_count == len(datas)


@SETTINGS
@given(st.integers(2, 8), st.data())
def test_any_byte_change_in_the_log_is_caught(n: int, data: st.DataObject) -> None:
    with sealed([{"text": "x" * i, "i": i} for i in range(n)]) as session:
        events = session / "events.jsonl"
        raw = bytearray(events.read_bytes())
        at = data.draw(st.integers(0, len(raw) - 1), label="offset")
        raw[at] = data.draw(st.integers(0, 255).filter(lambda b: b != raw[at]), label="byte")
        events.write_bytes(bytes(raw))
        assert kind_of(session)[0] != "ok"


@SETTINGS
@given(st.integers(2, 8), st.data())
def test_manifest_changes_fail_or_mean_nothing(n: int, data: st.DataObject) -> None:
    with sealed([{"i": i} for i in range(n)]) as session:
        path = session / "manifest.json"
        raw = bytearray(path.read_bytes())
        original = json.loads(raw)
        at = data.draw(st.integers(0, len(raw) - 1), label="offset")
        raw[at] = data.draw(st.integers(0, 255).filter(lambda b: b != raw[at]), label="byte")
        path.write_bytes(bytes(raw))
        if kind_of(session)[0] == "ok":  # e.g. whitespace: the signed content is the same
            assert json.loads(raw) == original


@SETTINGS
@given(st.integers(3, 12), st.data())
def test_structural_edits_are_named(n: int, data: st.DataObject) -> None:
    edit = data.draw(st.sampled_from(["delete", "duplicate", "swap"]), label="edit")
    at = data.draw(st.integers(0, n - 2), label="at")
    with sealed([{"text": "y" * (i % 4), "i": i} for i in range(n)]) as session:
        lines = (session / "events.jsonl").read_bytes().splitlines()
        if edit == "delete":
            del lines[at]
            expected = ("deleted", at + 1)
        elif edit == "duplicate":
            lines.insert(at + 1, lines[at])
            expected = ("inserted", at + 2)
        else:
            lines[at], lines[at + 1] = lines[at + 1], lines[at]
            expected = ("reordered", at + 1)
        rewrite(session, lines)
        assert kind_of(session) == expected


@contextmanager
def block_size(size: int) -> Iterator[None]:
    """Make the verifier read in tiny blocks, so lines straddle block boundaries."""
    saved = _scan._BLOCK
    _scan._BLOCK = size
    try:
        yield
    finally:
        _scan._BLOCK = saved


@SETTINGS
@given(st.integers(3, 12), st.integers(40, 3000), st.data())
def test_block_size_never_changes_the_verdict(n: int, size: int, data: st.DataObject) -> None:
    edit = data.draw(st.sampled_from(["none", "delete", "duplicate", "swap", "flip"]))
    at = data.draw(st.integers(0, n - 2), label="at")
    with sealed([{"text": "z" * (i * 37 % 300), "i": i} for i in range(n)]) as session:
        lines = (session / "events.jsonl").read_bytes().splitlines()
        if edit == "delete":
            del lines[at]
        elif edit == "duplicate":
            lines.insert(at + 1, lines[at])
        elif edit == "swap":
            lines[at], lines[at + 1] = lines[at + 1], lines[at]
        elif edit == "flip":
            lines[at] = lines[at].replace(b'"i":', b'"j":', 1)
        rewrite(session, lines)
        expected = kind_of(session)
        with block_size(size):
            assert kind_of(session) == expected


def test_a_line_longer_than_a_block_verifies() -> None:
    with sealed([{"text": "big " * 3_000_000}, {"text": "after"}]) as session:
        assert verify_session(session, TRUSTED).event_count == 2
