"""Wrapped base64 (issue 13): a literal inside a file printed by ``base64`` (76 columns) or
``openssl base64`` (64), with the line break inside the secret's form, at every alignment."""

from __future__ import annotations

import base64
import random

import pytest
from tests.mask.helpers import ENGINES, make, rand, stream_through

from airlock.mask import replacement

SECRET = rand(28)
MARK = replacement("env:K", b"", None)


def _wrapped(data: bytes, width: int, crlf: bool = False) -> bytes:
    encoded = base64.b64encode(data)
    lines = [encoded[i : i + width] for i in range(0, len(encoded), width)]
    return (b"\r\n" if crlf else b"\n").join(lines) + b"\n"


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("width", [16, 64, 76])
@pytest.mark.parametrize("prefix", range(0, 60, 7))
def test_a_wrapped_base64_secret_is_masked_at_every_offset(
    engine: str, width: int, prefix: int
) -> None:
    masker = make(engine, literals=(("env:K", SECRET),), builtin=False)
    data = b"x" * prefix + b'{"auth": "' + SECRET.encode() + b'"}' + b"y" * 30
    shown = _wrapped(data, width, crlf=prefix % 2 == 1)
    out = masker.mask_bytes(shown)
    assert MARK in out
    # Streamed in random pieces, the same bytes (chunking does not matter).
    cuts = random.Random(prefix).sample(range(1, len(shown)), 5)
    assert stream_through(masker, shown, cuts) == out
    assert stream_through(masker, shown, range(len(shown))) == out


def test_short_lines_are_not_read_as_wrapping() -> None:
    """A break after fewer than 16 base64 characters on a line is ordinary text."""
    masker = make(literals=(("env:K", SECRET),))
    encoded = base64.b64encode(SECRET.encode())
    text = b"a " + encoded[:10] + b"\n" + encoded[10:] + b"\n"
    assert masker.mask_bytes(text) == text
    assert masker.mask_bytes(b"word\n" * 100) == b"word\n" * 100


def test_a_quiet_stream_holds_a_wrapped_prefix() -> None:
    masker = make(literals=(("env:K", SECRET),), builtin=False)
    shown = _wrapped(b"p" * 40 + SECRET.encode() + b"q" * 40, 64)
    cut = shown.index(b"\n") + 3  # two lines: the break is inside the secret's form
    stream = masker.stream()
    first = stream.feed(shown[:cut]) + stream.flush_idle()
    rest = stream.feed(shown[cut:]) + stream.flush()
    assert first + rest == masker.mask_bytes(shown)
    assert MARK in rest


@pytest.mark.parametrize("engine", ENGINES)
def test_a_line_with_other_text_is_not_wrapping_however_streamed(engine: str) -> None:
    """The whole line before a break decides, also when a stream has shown most of it: the
    stream keeps enough of the line to judge it as the whole text does."""
    masker = make(engine, literals=(("env:K", SECRET),), builtin=False)
    encoded = base64.b64encode(b"p" * 45 + SECRET.encode() + b"q" * 30)
    text = b"auth: " + encoded[:70] + b"\n" + encoded[70:] + b"\n" + b"ok, done\n" * 80
    assert masker.mask_bytes(text) == text
    assert stream_through(masker, text, range(len(text))) == text
    # The same bytes without the prefix are wrapped base64.
    assert MARK in masker.mask_bytes(encoded[:70] + b"\n" + encoded[70:] + b"\n")
