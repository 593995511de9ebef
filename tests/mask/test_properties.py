"""Property tests: any chunking gives the one-shot bytes, no secret form survives, and the
hyperscan and RE2 engines give identical output."""

from __future__ import annotations

import base64
from urllib.parse import quote

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from tests.mask.helpers import ALNUM, chunks, rand, stream_through

from airlock.mask import Masker, MaskSettings, replacement
from airlock.mask.forms import literal_forms

# Printable ASCII without the replacement's brackets, plus some bytes that are not text.
SECRET_ALPHABET = [c for c in range(0x20, 0x7F) if c not in b"[]"] + [0, 9, 10, 0x80, 0xC3, 0xFF]
NOISE_ALPHABET = [*range(0x20, 0x7F), 9, 10, 0, 0xFF, 0xE9]

secrets = st.lists(st.sampled_from(SECRET_ALPHABET), min_size=4, max_size=40).map(bytes)
noise = st.lists(st.sampled_from(NOISE_ALPHABET), max_size=400).map(bytes)
splits = st.lists(st.integers(min_value=0, max_value=4000), max_size=12)

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_MASKERS: dict[tuple[str, tuple[tuple[str, bytes], ...]], Masker] = {}


def standalone_forms(value: bytes) -> set[bytes]:
    """The encodings the brief promises, computed independently of airlock.mask.forms."""
    forms = {value, value.hex().encode(), value.hex().upper().encode()}
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        forms |= {encode(value), encode(value).rstrip(b"=")}
    forms.add(quote(value, safe="").encode())
    return forms


def masker_for(engine: str, literals: tuple[tuple[str, bytes], ...]) -> Masker:
    key = (engine, literals)
    if key not in _MASKERS:
        masker = Masker(MaskSettings(engine=engine))  # type: ignore[arg-type]
        for rule_id, value in literals:
            masker.add_secret(value, rule_id)
        _MASKERS[key] = masker
    return _MASKERS[key]


@st.composite
def planted(draw: st.DrawFn) -> tuple[tuple[tuple[str, bytes], ...], bytes]:
    values = draw(st.lists(secrets, min_size=1, max_size=3, unique=True))
    literals = tuple((f"s{i}", v) for i, v in enumerate(values))
    pieces = [draw(noise)]
    for _ in range(draw(st.integers(1, 6))):
        value = draw(st.sampled_from(values))
        pieces.append(draw(st.sampled_from(literal_forms(value))))
        pieces.append(draw(noise))
    return literals, b"".join(pieces)


def _visible(form: bytes, literals: tuple[tuple[str, bytes], ...]) -> bool:
    marks = b"".join(replacement(rule_id, b"", None) for rule_id, _ in literals)
    return form not in marks


@PROPERTY
@given(case=planted(), cuts=splits)
def test_literal_forms_never_survive_and_stream_equals_one_shot(
    case: tuple[tuple[tuple[str, bytes], ...], bytes], cuts: list[int]
) -> None:
    literals, data = case
    forms = {f for _, v in literals for f in standalone_forms(v)}
    assume(all(_visible(f, literals) for f in forms))
    outputs = set()
    for engine in ("re2", "hyperscan"):
        masker = masker_for(engine, literals)
        one_shot = masker.mask_bytes(data)
        assert stream_through(masker, data, cuts) == one_shot
        outputs.add(one_shot)
        for form in forms:
            assert form not in one_shot
    assert len(outputs) == 1, "the hyperscan and RE2 engines disagree"


def _token(kind: int, n: int) -> bytes:
    shapes = [
        "gh" + "p_" + rand(36, seed=n),
        "AK" + "IA" + rand(16, "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", seed=n),
        "postgres://u:" + rand(10, seed=n) + "@h/db",
        "-----BEGIN RSA PRIVATE KEY-----\n"
        + rand(64, seed=n)
        + "\n"
        + rand(64, seed=n + 1)
        + "\n-----END RSA PRIVATE KEY-----",
        "aws_secret_access_key=" + rand(40, ALNUM + "/+", seed=n),
        "gl" + "pat-" + rand(20, seed=n),
        "eyJ" + rand(20, seed=n) + ".eyJ" + rand(30, seed=n) + "." + rand(20, seed=n),
        "sk" + "_live_" + rand(24, seed=n),
    ]
    return shapes[kind % len(shapes)].encode()


@st.composite
def with_tokens(draw: st.DrawFn) -> bytes:
    pieces = [draw(noise)]
    for _ in range(draw(st.integers(0, 5))):
        pieces.append(_token(draw(st.integers(0, 7)), draw(st.integers(0, 3))))
        pieces.append(draw(noise))
    return b"".join(pieces)


@PROPERTY
@given(data=with_tokens(), sizes=st.lists(st.integers(1, 700), min_size=1, max_size=8))
def test_patterns_chunking_and_engines_agree(data: bytes, sizes: list[int]) -> None:
    results = set()
    for engine in ("re2", "hyperscan"):
        masker = masker_for(engine, ())
        stream = masker.stream()
        streamed = b"".join(stream.feed(c) for c in chunks(data, sizes)) + stream.flush()
        one_shot = masker.mask_bytes(data)
        assert streamed == one_shot
        results.add(one_shot)
    assert len(results) == 1, "the hyperscan and RE2 engines disagree"
    assert b"PRIVATE KEY-----\n" not in next(iter(results))


@PROPERTY
@given(
    case=planted(),
    sizes=st.lists(st.integers(1, 60), min_size=1, max_size=8),
    idles=st.lists(st.booleans(), min_size=1, max_size=8),
)
def test_flush_idle_never_lets_a_literal_out(
    case: tuple[tuple[tuple[str, bytes], ...], bytes], sizes: list[int], idles: list[bool]
) -> None:
    literals, data = case
    forms = {f for _, v in literals for f in standalone_forms(v)}
    assume(all(_visible(f, literals) for f in forms))
    stream = masker_for("hyperscan", literals).stream()
    out = []
    for i, piece in enumerate(chunks(data, sizes)):
        out.append(stream.feed(piece))
        if idles[i % len(idles)]:
            out.append(stream.flush_idle())
    out.append(stream.flush())
    shown = b"".join(out)
    for form in forms:
        assert form not in shown
