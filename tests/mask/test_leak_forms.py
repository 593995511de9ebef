"""Regression tests for the leak classes of issue 13: JSON-escaped secrets, URL-encoding with any
safe set, and secrets broken up by bytes a terminal does not show (ANSI/OSC escapes, NUL, CR)."""

from __future__ import annotations

import base64
import json
import quopri
import re
import shlex
import subprocess
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.mask.helpers import make, rand

from airlock.mask import replacement
from airlock.mask._compile import _LONE_CR

# A secret with every character class JSON and URL encoders treat specially.
SECRET = 'k"' + rand(6) + "\\/ é\x01<&>+" + rand(6)
MARK = replacement("env:K", b"", None)


def _js_stringify(value: str) -> str:
    """JavaScript's JSON.stringify, by node when it is installed."""
    try:
        proc = subprocess.run(
            ["node", "-e", "process.stdout.write(JSON.stringify(process.argv[1]))", value],
            capture_output=True,
            check=True,
            timeout=30,
        )
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("node is not installed")
    return proc.stdout.decode("utf-8")


JSON_FORMS = {
    "json.dumps": lambda v: json.dumps(v),
    "ensure_ascii=False": lambda v: json.dumps(v, ensure_ascii=False),
    "escaped-slash": lambda v: json.dumps(v).replace("/", "\\/"),
    "upper-hex": lambda v: json.dumps(v).replace("\\u00e9", "\\u00E9"),
    "JSON.stringify": _js_stringify,
}


@pytest.mark.parametrize("form", sorted(JSON_FORMS))
def test_secret_printed_inside_a_json_string_is_masked(engine: str, form: str) -> None:
    masker = make(engine, literals=(("env:K", SECRET),))
    printed = '{"token": ' + JSON_FORMS[form](SECRET) + "}"
    assert masker.mask_text(printed) == '{"token": "' + MARK.decode() + '"}'


URL_FORMS = {
    "quote safe=/": lambda v: quote(v),
    "quote safe=''": lambda v: quote(v, safe=""),
    "quote safe=/&": lambda v: quote(v, safe="/&"),
    "quote_plus": lambda v: quote_plus(v),
    "quote_plus safe=/": lambda v: quote_plus(v, safe="/"),
    "encodeURIComponent": lambda v: quote(v, safe="!'()*-._~"),
    "encodeURI": lambda v: quote(v, safe="!#$&'()*+,-./:;=?@_~"),
    "lower-case escapes": lambda v: re.sub("%..", lambda m: m[0].lower(), quote(v, safe="")),
}


@pytest.mark.parametrize("form", sorted(URL_FORMS))
def test_url_encoded_secret_is_masked_whatever_the_safe_set(engine: str, form: str) -> None:
    masker = make(engine, literals=(("env:K", SECRET),))
    encoded = URL_FORMS[form](SECRET).encode()
    out = masker.mask_bytes(b"GET /cb?token=" + encoded + b"&x=1")
    assert out == b"GET /cb?token=" + MARK + b"&x=1"


INVISIBLE = {
    "ansi colour": b"\x1b[1;31m",
    "ansi reset": b"\x1b[0m",
    "osc hyperlink": b"\x1b]8;;https://example.invalid/\x1b\\",
    "osc title (BEL)": b"\x1b]0;title\x07",
    "charset escape": b"\x1b(B",
    "save cursor": b"\x1b7",
    "nul": b"\x00",
    "carriage return": b"\r",
    "several": b"\x1b[31m\x00\r\x1b[0m",
    "del": b"\x7f",
    "c1 csi colour (utf-8)": b"\xc2\x9b1;31m",
    "overstruck character": b"x\x08",
    "overstruck underline": b"_\x08",
    "mixed": b"\x7f\xc2\x9b0m#\x08\x1b[0m",
}


@pytest.mark.parametrize("name", sorted(INVISIBLE))
@pytest.mark.parametrize("at", [1, 5, 11])
def test_invisible_bytes_inside_a_secret_do_not_hide_it(engine: str, name: str, at: int) -> None:
    value = ("tok-" + rand(16)).encode()
    masker = make(engine, literals=(("env:K", value),))
    shown = value[:at] + INVISIBLE[name] + value[at:]
    # The whole byte range, escapes included, becomes one marker.
    assert masker.mask_bytes(b"<" + shown + b">") == b"<" + MARK + b">"


def test_pty_newline_translation_inside_a_secret_is_masked(engine: str) -> None:
    value = ("line1-" + rand(8) + "\nline2-" + rand(8)).encode()
    masker = make(engine, literals=(("env:K", value),))
    assert masker.mask_bytes(b"$ " + value.replace(b"\n", b"\r\n") + b"\r\n") == (
        b"$ " + MARK + b"\r\n"
    )


def test_invisible_bytes_split_across_chunks_are_still_masked(engine: str) -> None:
    value = ("tok-" + rand(20)).encode()
    masker = make(engine, literals=(("env:K", value),))
    data = b"x " + value[:7] + b"\x1b[32m" + value[7:] + b" y"
    for cut in range(1, len(data)):
        stream = masker.stream()
        out = stream.feed(data[:cut]) + stream.feed(data[cut:]) + stream.flush()
        assert out == b"x " + MARK + b" y", cut


def test_canonical_matches_are_named_by_their_own_literal(engine: str) -> None:
    a, b = "alpha-" + rand(10, seed=1) + "/+x", "bravo-" + rand(10, seed=2)
    masker = make(engine, literals=(("env:A", a), ("env:B", b)))
    shown = b[:3] + "\x1b[0m" + b[3:] + " " + quote(a, safe="+")
    assert masker.mask_text(shown) == "[MASKED:env:B] [MASKED:env:A]"


def test_ordinary_text_with_escapes_and_percent_is_left_alone(engine: str) -> None:
    masker = make(engine, literals=(("env:K", SECRET),))
    text = b"\x1b[32mok\x1b[0m 100% done\r\n a+b=c %41 \x00 tok-" + rand(8).encode()
    assert masker.mask_bytes(text) == text


@pytest.mark.parametrize("value", ["password", "true", "Deploy", "1234567", "xxxxxxxxxxxx"])
def test_a_weak_secret_is_refused_or_reported(value: str) -> None:
    from airlock.errors import ConfigError

    with pytest.raises(ConfigError) as refused:
        make(literals=(("env:WEAK", value),), weak="error")
    assert "env:WEAK" in str(refused.value.message)
    assert value not in str(refused.value.message) + str(refused.value.hint)
    warned = make(literals=(("env:WEAK", value),))
    assert [rule for rule, _ in warned.weak_literals] == ["env:WEAK"]


@pytest.mark.parametrize("value", ["tok-" + rand(12), "hunter2-correct-horse", "12345678901"])
def test_a_real_secret_is_not_called_weak(value: str) -> None:
    assert make(literals=(("env:OK", value),), weak="error").weak_literals == []


def test_binary_output_is_masked_losslessly(engine: str) -> None:
    value = bytes(range(0x80, 0x90)) + b"\x00\xff-bin"
    masker = make(engine, literals=(("env:BIN", value),))
    noise = bytes(range(256)) * 4
    out = masker.mask_bytes(noise + value + noise)
    assert out == noise + b"[MASKED:env:BIN]" + noise


@settings(max_examples=300, deadline=None)
@given(buf=st.binary(max_size=40).map(lambda b: bytes(b"\r\na"[x % 3] for x in b)))
def test_a_lone_cr_is_found_as_counting_crs_and_crlfs_would(buf: bytes) -> None:
    """The quick check for pty text (CR only inside CRLF: the canonical matcher can skip it)."""
    by_count = b"\r" in buf and buf.count(b"\r") != buf.count(b"\r\n")
    assert (_LONE_CR.search(buf) is not None) == by_count


def _iconv(value: str, charset: str) -> bytes:
    return subprocess.run(
        ["iconv", "-f", "UTF-8", "-t", charset], input=value.encode(), capture_output=True,
        check=True, timeout=30,
    ).stdout  # fmt: skip


def _printf_q(value: str) -> bytes:
    return subprocess.run(
        ["bash", "-c", 'printf %q "$1"', "_", value], capture_output=True, check=True, timeout=30
    ).stdout


OTHER_SECRET = "it's" + rand(8) + "é\x01" + rand(5)
PRINTABLE = "it's a" + rand(8) + '"$x' + rand(5)  # bash writes it with backslashes
OTHER_FORMS = {
    "utf-16le": (OTHER_SECRET, lambda v: _iconv(v, "UTF-16LE")),
    "utf-16be": (OTHER_SECRET, lambda v: _iconv(v, "UTF-16BE")),
    "base32": (OTHER_SECRET, lambda v: base64.b32encode(v.encode())),
    "base32-unpadded": (OTHER_SECRET, lambda v: base64.b32encode(v.encode()).rstrip(b"=")),
    "bytes-repr": (OTHER_SECRET, lambda v: repr(v.encode()).encode()),
    "shell-quoted": (OTHER_SECRET, lambda v: shlex.quote(v).replace("'\"'\"'", "'\\''").encode()),
    "printf-q-ansi-c": (OTHER_SECRET, _printf_q),
    "printf-q-backslashes": (PRINTABLE, _printf_q),
    "quoted-printable": (
        OTHER_SECRET + " =" + PRINTABLE,
        lambda v: quopri.encodestring(v.encode()),
    ),
}


@pytest.mark.parametrize("form", OTHER_FORMS)
def test_encodings_nobody_named_are_masked(form: str) -> None:
    """Issue 13, item 2: each form leaked on the code before it was added to forms.py."""
    secret, encode = OTHER_FORMS[form]
    masker = make(literals=(("env:K", secret),))
    shown = b"out: " + encode(secret) + b" end\n"
    out = masker.mask_bytes(shown)
    assert MARK in out and out.startswith(b"out: ") and out.endswith(b" end\n"), out
