"""The forms a literal secret can take in output: the value itself and its common encodings.

A secret leaks as often through an encoding as through its raw bytes: an ``Authorization: Basic``
header (base64), a URL query (percent-encoding), a hex dump. Each form listed here is masked
with the literal's own rule id.
"""

from __future__ import annotations

import base64
import json
import quopri
import re
from collections.abc import Callable
from urllib.parse import quote, quote_plus

__all__ = ["MIN_EMBEDDED_BASE64", "base64_forms", "literal_forms"]

MIN_EMBEDDED_BASE64 = 8
"""Shortest base64 core kept for a secret embedded in a longer base64 stream.

Shorter cores would mask unrelated base64 text too often to be useful.
"""


def literal_forms(value: bytes) -> list[bytes]:
    """Every form of ``value`` the masker looks for, without duplicates, longest first."""
    forms = {value}
    forms.update(base64_forms(value))
    forms.update(_percent_forms(value))
    forms.update(_json_forms(value))
    forms.update(_other_encodings(value))
    forms.add(value.hex().encode())
    forms.add(value.hex().upper().encode())
    return sorted(forms, key=lambda f: (-len(f), f))


def base64_forms(value: bytes) -> set[bytes]:
    """base64 and base64url, padded and unpadded, and the cores at the 3 alignments."""
    forms: set[bytes] = set()
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        padded = encode(value)
        forms.update({padded, padded.rstrip(b"=")})
        for offset in range(3):
            core = _embedded_core(encode, value, offset)
            if len(core) >= MIN_EMBEDDED_BASE64:
                forms.add(core)
    return forms


def _embedded_core(encode: Callable[[bytes], bytes], value: bytes, offset: int) -> bytes:
    """The base64 characters that depend only on ``value`` when it starts ``offset`` bytes
    into a 3-byte group of a longer encoded stream (the 3 alignments an embedded secret takes).
    """
    encoded = encode(b"\0" * offset + value + b"\0\0")
    first_bit, end_bit = 8 * offset, 8 * (offset + len(value))
    first_char = -(-first_bit // 6)  # ceil: the first character wholly inside the value's bits
    end_char = end_bit // 6
    return encoded[first_char:end_char]


def _other_encodings(value: bytes) -> set[bytes]:
    """base32 (padded and not), Python's ``repr`` of the bytes (``b'\\x01'`` escapes, quotes
    excluded), the body of a shell single-quoted word (``'`` written ``'\\''``), and the text
    as UTF-16LE and UTF-16BE (``iconv -t UTF-16LE``); bash's ``printf %q`` (both of its
    spellings) and quoted-printable (``quopri``, MIME)."""
    b32 = base64.b32encode(value)
    forms = {b32, b32.rstrip(b"="), repr(value)[2:-1].encode(), value.replace(b"'", b"'\\''")}
    forms.update(_printf_q_forms(value))
    forms.add(quopri.encodestring(value).removesuffix(b"=\n"))
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return forms
    forms.update({text.encode("utf-16-le"), text.encode("utf-16-be")})
    return forms


_SHELL_SPECIAL = frozenset(b" '\"\\$`!&;|()<>*?[]{}^,")
_ANSI_C = {7: b"\\a", 8: b"\\b", 9: b"\\t", 10: b"\\n", 11: b"\\v", 12: b"\\f", 13: b"\\r"}
_ANSI_C |= {27: b"\\E", 0x27: b"\\'", 0x5C: b"\\\\"}


def _printf_q_forms(value: bytes) -> set[bytes]:
    """bash ``printf %q``: a backslash before each shell-special byte, or, when the value has
    control bytes, the body of ``$'…'`` (``\\t``, ``\\E``, ``\\'``, octal ``\\001``)."""
    escaped = b"".join(b"\\" + bytes((b,)) if b in _SHELL_SPECIAL else bytes((b,)) for b in value)
    ansi_c = b"".join(
        _ANSI_C.get(b) or (b"\\%03o" % b if b < 0x20 or b == 0x7F else bytes((b,))) for b in value
    )
    return {escaped, ansi_c}


def _percent_forms(value: bytes) -> set[bytes]:
    forms: set[bytes] = set()
    for encoder in (quote, quote_plus):
        upper = encoder(value, safe="").encode()
        forms.update({upper, _lower_escapes(upper)})
    forms.discard(value)
    return forms


def _lower_escapes(encoded: bytes) -> bytes:
    """``%2F`` → ``%2f``: both spellings are valid percent-encoding and both occur."""
    parts = encoded.split(b"%")
    return parts[0] + b"".join(b"%" + p[:2].lower() + p[2:] for p in parts[1:])


def _json_forms(value: bytes) -> set[bytes]:
    """The value inside a JSON string, as common encoders write it.

    ``json.dumps`` (``\\uXXXX`` for non-ASCII) and ``ensure_ascii=False`` (the same escapes
    as JavaScript's ``JSON.stringify``), each also with ``/`` written ``\\/`` (PHP, some Java),
    upper-case ``\\uXXXX`` digits (.NET) and ``<``, ``>``, ``&`` as ``\\u003c`` … (Go); and as
    .NET's System.Text.Json writes it by default, ``+``, ``'``, ``"``, ``<``, ``>``, ``&`` and a
    backquote as upper-case escapes (``\\u002B``), with and without ``\\/``.
    A value that is not UTF-8 cannot be a JSON string and has no JSON form.
    """
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return set()
    forms: set[bytes] = set()
    for ensure_ascii in (True, False):
        body = json.dumps(text, ensure_ascii=ensure_ascii)[1:-1]
        variants = {body, body.replace("/", "\\/"), _upper_unicode_escapes(body)}
        variants.add(body.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))
        forms.update(v.encode("utf-8") for v in variants)
    dotnet = _html_safe_escapes(_upper_unicode_escapes(json.dumps(text)[1:-1]))
    forms.update({dotnet.encode(), dotnet.replace("/", "\\/").encode()})
    forms.discard(value)
    return forms


# What .NET's default JavaScriptEncoder escapes besides non-ASCII and control characters.
_HTML_SENSITIVE = {c: f"\\u{ord(c):04X}" for c in "+'<>&`"}
_QUOTE = re.compile(r'(?<!\\)((?:\\\\)*)\\"')  # a \" that is not itself escaped


def _html_safe_escapes(body: str) -> str:
    """A ``json.dumps`` body with ``"`` and the HTML-sensitive characters as ``\\u00XX``."""
    body = _QUOTE.sub(lambda m: m.group(1) + "\\u0022", body)
    return "".join(_HTML_SENSITIVE.get(c, c) for c in body)


def _upper_unicode_escapes(body: str) -> str:
    return re.sub(r"\\u[0-9a-f]{4}", lambda m: "\\u" + m[0][2:].upper(), body)
