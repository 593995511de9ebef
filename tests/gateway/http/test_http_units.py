"""Sans-I/O parts of the HTTP gateway: path normalisation, JSON field masking, body capture."""

from __future__ import annotations

import gzip
import json
import zlib
from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import airlock.gateway.http
from airlock.gateway.http.capture import BodyTap, render_body
from airlock.gateway.http.jsonmask import MASKED_FIELD, JsonFieldMasker
from airlock.gateway.http.paths import join_upstream, normalize_path
from airlock.mask import Masker, MaskSettings

_MASKER = Masker(MaskSettings())


def test_public_api_is_pinned() -> None:
    assert set(airlock.gateway.http.__all__) == {
        "HttpGateway",
        "HttpGatewayError",
        "HttpProxy",
        "ProxySettings",
        "ThreadedHttpGateway",
        "serve_http",
        "start_in_thread",
    }


_path_chars = st.sampled_from(
    [
        "a",
        "B",
        "/",
        ".",
        "%",
        "2",
        "e",
        "F",
        "f",
        "~",
        " ",
        "\u00e9",
        "?",
        "#",
        "%2e",
        "%2F",
        "%00",
        "..",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_path_chars, max_size=30).map(lambda parts: "/" + "".join(parts)))
def test_normalised_paths_are_canonical(raw: str) -> None:
    norm = normalize_path(raw.encode())
    segments = norm.judged.split("/")[1:]
    assert norm.judged.startswith("/") and norm.wire.startswith("/")
    assert "." not in segments and ".." not in segments
    assert "" not in segments[:-1]  # no empty segment except a trailing slash
    if "%00" in raw:  # a control character is refused, even in a segment a ``..`` removes
        assert norm.invalid
    if norm.invalid:  # refused (a control character, or not UTF-8): never sent upstream
        return
    assert normalize_path(norm.wire) == norm  # idempotent: the upstream sees what was judged
    wire_segments = norm.wire.split("/")[1:]
    assert [
        unquote_to_bytes(s).decode("utf-8", "replace").replace("/", "%2F") for s in wire_segments
    ] == segments


@pytest.mark.parametrize(
    ("raw", "judged", "wire"),
    [
        ("/", "/", "/"),
        ("", "/", "/"),
        ("/a/b/", "/a/b/", "/a/b/"),
        ("/a/%2F/b", "/a/%2F/b", "/a/%2F/b"),
        ("/%2e%2E/x", "/x", "/x"),
        ("/a%00b", "/a\x00b", "/a%00b"),
        ("/caf%C3%A9", "/caf\u00e9", "/caf%C3%A9"),
        ("/%ff", "/\ufffd", "/%FF"),
        ("/a/b/../../..", "/", "/"),
    ],
)
def test_normalise_examples(raw: str, judged: str, wire: str) -> None:
    norm = normalize_path(raw)
    assert (norm.judged, norm.wire) == (judged, wire)


@pytest.mark.parametrize(
    ("raw", "candidates"),
    [
        ("/", ("/",)),
        ("/items/1/", ("/items/1",)),
        ("/items/1//", ("/items/1",)),
        ("/items%2F1", ("/items%2F1", "/items/1")),
        ("/items%2f1/", ("/items%2F1", "/items/1")),
        ("/a/b%2F..%2F..%2Fc", ("/a/b%2F..%2F..%2Fc", "/c")),
        ("/a%5Cb", ("/a\\b", "/a/b")),
        ("/a%252Fb", ("/a%2Fb", "/a/b")),  # servers that decode twice see a slash
        ("/x/%252e%252e/items/1", ("/x/%2e%2e/items/1", "/items/1")),
        ("/items;x/1", ("/items;x/1", "/items/1")),  # servlet containers drop ;params
        ("/x/..;/items/1", ("/x/..;/items/1", "/items/1")),
        ("/a;b%2Fc", ("/a;b%2Fc", "/a", "/a;b/c")),
    ],
)
def test_guardrails_judge_every_reading_of_a_path(raw: str, candidates: tuple[str, ...]) -> None:
    assert normalize_path(raw).candidates == candidates


@settings(max_examples=300, deadline=None)
@given(st.lists(_path_chars, max_size=30).map(lambda parts: "/" + "".join(parts)))
def test_path_candidates_have_no_trailing_slash_and_start_with_the_judged_path(raw: str) -> None:
    norm = normalize_path(raw.encode())
    first, *rest = norm.candidates
    assert first == (norm.judged.rstrip("/") or "/")
    assert all(c == "/" or not c.endswith("/") for c in norm.candidates)
    assert len(rest) <= 1 and rest != [first]


@pytest.mark.parametrize(
    ("base", "wire", "out"),
    [
        ("", "/x", "/x"),
        ("/", "/x", "/x"),
        ("/api/v3", "/x", "/api/v3/x"),
        ("/api/v3/", "/", "/api/v3/"),
        ("", "/", "/"),
    ],
)
def test_join_upstream(base: str, wire: str, out: str) -> None:
    assert join_upstream(base, wire) == out


def test_json_field_globs() -> None:
    doc = {
        "password": "a",
        "user": {"password": "b", "name": "n", "token": "t"},
        "list": [{"token": "c"}, {"other": 1}],
        "data": {"user": {"email": "e@x", "id": 1}},
        "Token": "case",
    }
    masked = JsonFieldMasker(["password", "*.token", "data.user.email"]).mask(doc)
    assert masked["password"] == MASKED_FIELD and masked["user"]["password"] == MASKED_FIELD
    assert masked["user"]["token"] == MASKED_FIELD and masked["list"][0]["token"] == MASKED_FIELD
    assert masked["data"]["user"] == {"email": MASKED_FIELD, "id": 1}
    assert masked["user"]["name"] == "n" and masked["Token"] == "case"
    assert doc["password"] == "a"  # the input is not modified


def test_json_field_mask_replaces_whole_subtrees() -> None:
    masked = JsonFieldMasker(["secrets"]).mask({"secrets": {"a": [1, 2]}, "k": [[{"secrets": 1}]]})
    assert masked == {"secrets": MASKED_FIELD, "k": [[{"secrets": MASKED_FIELD}]]}


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda c: (
            st.lists(c, max_size=3)
            | st.dictionaries(st.sampled_from(["password", "a", "b"]), c, max_size=3)
        ),
        max_leaves=20,
    )
)
def test_no_password_key_survives(doc: object) -> None:
    out = json.dumps(JsonFieldMasker(["password"]).mask(doc))

    def values(node: object) -> list[object]:
        if isinstance(node, dict):
            return [v for k, v in node.items() if k == "password"] + [
                x for v in node.values() for x in values(v)
            ]
        if isinstance(node, list):
            return [x for item in node for x in values(item)]
        return []

    assert all(v == MASKED_FIELD for v in values(json.loads(out)))


def _render(
    tap: BodyTap, ctype: str = "application/json", enc: str = "", fields: list[str] | None = None
) -> dict[str, object]:
    return render_body(
        tap,
        content_type=ctype,
        content_encoding=enc,
        fields=JsonFieldMasker(fields or []),
        masker=_MASKER,
    )


def test_tap_keeps_prefix_and_hashes_everything() -> None:
    import hashlib

    tap = BodyTap(5)
    for chunk in (b"abc", b"defg", b"", b"h"):
        tap.feed(chunk)
    assert tap.prefix == b"abcde" and tap.size == 8 and tap.truncated
    assert tap.sha256 == hashlib.sha256(b"abcdefgh").hexdigest()


def test_cut_multibyte_character_is_still_text() -> None:
    tap = BodyTap(4)
    tap.feed("abc\u00e9def".encode())
    assert _render(tap, "text/plain")["body"] == "abc"


def test_gzip_bomb_is_bounded() -> None:
    bomb = gzip.compress(b"a" * 50_000_000)
    tap = BodyTap(1024)
    tap.feed(bomb)
    body = _render(tap, "text/plain", "gzip")["body"]
    assert isinstance(body, str) and len(body) <= 4 * 1024


def test_unknown_or_broken_encoding_is_not_recorded() -> None:
    tap = BodyTap(100)
    tap.feed(b"\x00garbage")
    assert "body" not in _render(tap, "text/plain", "br")
    assert "body" not in _render(tap, "text/plain", "gzip")
    tap2 = BodyTap(100)
    tap2.feed(zlib.compress(b'{"a": 1}'))
    assert _render(tap2, "application/json", "deflate")["body"] == '{"a": 1}'


def test_json_that_does_not_parse_is_not_recorded_when_fields_are_masked() -> None:
    tap = BodyTap(100)
    tap.feed(b'{"password": "x", broken')
    assert "body" not in _render(tap, fields=["password"])
    assert "x" in str(_render(tap)["body"])  # without field masking: the masker alone decides


_json_docs = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(_json_docs)
def test_decoding_json_escapes_keeps_the_document(doc: object) -> None:
    from airlock.gateway.http.capture import decode_json_escapes

    escaped = json.dumps(doc)  # ensure_ascii: every non-ASCII character escaped
    decoded = decode_json_escapes(escaped)
    assert json.loads(decoded) == doc
    assert decode_json_escapes(decoded) == decoded


@pytest.mark.parametrize(
    ("text", "out"),
    [
        ('"\\u0073k_live"', '"sk_live"'),
        ('"\\\\u0073k"', '"\\\\u0073k"'),  # an escaped backslash, then the letters u0073
        ('"\\\\\\u0073k"', '"\\\\sk"'),
        ('"\\u0022"', '"\\u0022"'),  # a quote stays escaped
        ('"\\ud83d\\ude00"', '"\U0001f600"'),
        ('"\\ud83d"', '"\\ud83d"'),  # a lone surrogate stays escaped
        ('{"k": "\\u00', '{"k": "\\u00'),  # cut at the cap mid-escape
    ],
)
def test_decoding_json_escapes_examples(text: str, out: str) -> None:
    from airlock.gateway.http.capture import decode_json_escapes

    assert decode_json_escapes(text) == out


_keys = st.sampled_from(["password", "token", "name", "pass", "word", "p\u00e4ss", "a.b", "*"])
_docs_with_keys = st.recursive(
    st.none() | st.integers() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(_docs_with_keys, st.sampled_from([["password"], ["user.token"], ["pass*"], ["p\u00e4ss"]]))
def test_skipping_a_document_that_names_no_field_changes_nothing(
    doc: object, globs: list[str]
) -> None:
    fields = JsonFieldMasker(globs)
    for text in (json.dumps(doc), json.dumps(doc, ensure_ascii=False)):
        if not fields.might_match(text):
            assert fields.mask(json.loads(text)) == json.loads(text)
