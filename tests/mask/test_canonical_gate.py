"""hyperscan's canonical gate (trigger bytes and a CR before anything but LF, found in the
literal scan) says "search" for exactly the buffers the Python checks it replaced would."""

from __future__ import annotations

import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airlock.mask import Masker, MaskSettings
from airlock.mask._compile import HyperscanLiterals
from airlock.mask._snapshot import Snapshot

pytest.importorskip("hyperscan")

SECRETS = {
    "plain": "bench-secret-value-0123456789abcdef",
    "newline, percent, space": "multi\nline secret%+value",
}
PIECES = [b"a", b"Z", b" ", b"\r", b"\n", b"\x1b", b"\x00", b"\x08", b"\x7f", b"\x9b", b"\xc2"]
BYTES = st.binary(max_size=64) | st.lists(
    st.sampled_from([*PIECES, b"%", b"+", b"\r\n", b"\n\r"]), max_size=40
).map(b"".join)


@functools.cache
def _snapshot(name: str) -> Snapshot:
    return Masker(MaskSettings(literals=(("env:K", SECRETS[name]),)))._snapshot


@pytest.mark.parametrize("name", sorted(SECRETS))
@settings(max_examples=200, deadline=None)
@given(buf=BYTES)
def test_gate_agrees_with_the_python_checks(name: str, buf: bytes) -> None:
    snapshot = _snapshot(name)
    matcher = snapshot.literal_matcher
    assert matcher is not None and matcher.gates_canonical
    wrapped_line = HyperscanLiterals.WRAP_GATE in matcher.scan(buf)[0]
    searched_here = snapshot.literals.canonical_may_match(buf, wrapped_line)  # gate=None
    hits, _ = snapshot._scan(buf)
    assert (snapshot.canonical_index in hits) == searched_here
    assert HyperscanLiterals.CANONICAL_GATE not in hits


def test_a_cr_at_the_end_of_a_buffer_opens_the_gate() -> None:
    snapshot = _snapshot("plain")
    assert snapshot.canonical_index in snapshot._scan(b"abc\r")[0]
    assert snapshot.canonical_index not in snapshot._scan(b"abc\r\n")[0]
