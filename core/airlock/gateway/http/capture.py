"""What the HTTP gateway records of a body: the first N bytes, masked, plus size and SHA-256.

Bodies stream through the gateway; a :class:`BodyTap` sees every chunk, keeps only the first
``cap`` bytes, and hashes all of them. :func:`render_body` turns the kept prefix into event data:
JSON field masking first (``mask_json_fields``), then the session masker. A JSON body that was cut
at the cap cannot be field-masked, so it is not recorded when field masking is configured.
"""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

from airlock.gateway.http.jsonmask import JsonFieldMasker
from airlock.mask import Masker

__all__ = [
    "BodyTap",
    "decode_json_escapes",
    "header_names",
    "masked_headers",
    "render_body",
    "render_prefix",
    "render_whole",
]

_MAX_DECODE_GROWTH = 4  # a recorded, decompressed prefix is at most cap * this many bytes


_EMPTY_SHA256 = hashlib.sha256().hexdigest()


class BodyTap:
    """Sees a body's chunks: counts, hashes, and keeps the first ``cap`` bytes."""

    __slots__ = ("_hash", "_kept", "cap", "size")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.size = 0
        self._hash: Any = None  # made on the first bytes (most requests have none)
        self._kept = b""

    def feed(self, chunk: bytes) -> None:
        """Account for one chunk."""
        if not chunk:
            return
        if self._hash is None:
            self._hash = hashlib.sha256(chunk)
            self._kept = chunk[: self.cap]
        else:
            self._hash.update(chunk)
            room = self.cap - len(self._kept)
            if room > 0:
                self._kept += chunk[:room]
        self.size += len(chunk)

    @property
    def prefix(self) -> bytes:
        return bytes(self._kept)

    @property
    def truncated(self) -> bool:
        return self.size > len(self._kept)

    @property
    def sha256(self) -> str:
        return _EMPTY_SHA256 if self._hash is None else self._hash.hexdigest()


def render_body(
    tap: BodyTap,
    *,
    content_type: str,
    content_encoding: str,
    fields: JsonFieldMasker,
    masker: Masker,
) -> dict[str, Any]:
    """Event data for a body: ``size``, ``sha256`` and, when recordable, ``body`` (masked)."""
    return render_whole(
        tap,
        content_type=content_type,
        content_encoding=content_encoding,
        fields=fields,
        masker=masker,
    )[0]


def render_whole(
    tap: BodyTap,
    *,
    content_type: str,
    content_encoding: str,
    fields: JsonFieldMasker,
    masker: Masker,
) -> tuple[dict[str, Any], bool]:
    """:func:`render_body`, and whether the recorded ``body`` is the whole body exactly as it
    was, UTF-8, with nothing decoded or masked in it: then ``masker`` found no secret in the
    body's bytes."""
    data: dict[str, Any] = {"size": tap.size, "sha256": tap.sha256}
    if tap.cap == 0 or tap.size == 0:
        return data, False
    truncated = tap.truncated
    shown, clean = _render(
        tap.prefix,
        cap=tap.cap,
        truncated=truncated,
        content_type=content_type,
        content_encoding=content_encoding,
        fields=fields,
        masker=masker,
    )
    data.update(shown)
    return data, clean and not truncated


def render_prefix(
    prefix: bytes,
    *,
    cap: int,
    truncated: bool,
    content_type: str,
    content_encoding: str,
    fields: JsonFieldMasker,
    masker: Masker,
) -> dict[str, Any]:
    """``body`` (masked text) and ``body_truncated`` for the first bytes of a body, or
    ``body_omitted`` saying why they cannot be recorded as text. A compressed prefix is
    decoded to at most a few times ``cap``."""
    return _render(
        prefix,
        cap=cap,
        truncated=truncated,
        content_type=content_type,
        content_encoding=content_encoding,
        fields=fields,
        masker=masker,
    )[0]


def _render(
    prefix: bytes,
    *,
    cap: int,
    truncated: bool,
    content_type: str,
    content_encoding: str,
    fields: JsonFieldMasker,
    masker: Masker,
) -> tuple[dict[str, Any], bool]:
    """:func:`render_prefix`, and whether the text recorded is ``prefix`` itself (see
    :func:`render_whole`)."""
    if not prefix:
        return {}, False
    raw = _decoded(prefix, content_encoding, cap) if content_encoding else prefix
    if raw is None:
        return {"body_omitted": f"content-encoding {content_encoding} not decoded"}, False
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        cut = _text(raw, truncated=truncated)
        if cut is None:
            return {"body_omitted": "binary"}, False
        text = cut
    clean = raw is prefix
    if _looks_json(content_type, text):
        if "\\u" in text:
            text = decode_json_escapes(text)
            clean = False
        if fields.enabled and fields.might_match(text):
            masked_json = _mask_json(text, fields)
            if masked_json is None:
                return {"body_omitted": "JSON cut at the cap cannot be field-masked"}, False
            text = masked_json
            clean = False
    masked = masker.mask_text(text)
    return {"body": masked, "body_truncated": truncated}, clean and masked == text


# A \uXXXX escape not itself escaped (preceded by an even number of backslashes), or a pair.
_ESCAPE = re.compile(
    r"(?<!\\)((?:\\\\)*)\\u([dD][89abAB][0-9a-fA-F]{2})\\u([dD][c-fC-F][0-9a-fA-F]{2})"
    r"|(?<!\\)((?:\\\\)*)\\u([0-9a-fA-F]{4})"
)
# What JSON must keep escaped inside a string: the quote, the backslash, control characters.
_KEEP = frozenset({'"', "\\"} | {chr(c) for c in range(0x20)})


def decode_json_escapes(text: str) -> str:
    """JSON text with its ``\\uXXXX`` escapes written as the characters they stand for (those
    JSON needs escaped, and lone surrogates, stay escaped): ``"\\u0073k_live_…"`` is
    ``sk_live_…`` to every JSON reader, so the masker must see it that way. Works on JSON cut at
    the cap too."""
    if "\\u" not in text:
        return text
    return _ESCAPE.sub(_unescape, text)


def _unescape(match: re.Match[str]) -> str:
    if match.group(2) is not None:
        high, low = int(match.group(2), 16), int(match.group(3), 16)
        char = chr(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))
        return match.group(1) + char
    code = int(match.group(5), 16)
    char = chr(code)
    if char in _KEEP or 0xD800 <= code <= 0xDFFF:
        return match.group(0)
    return match.group(4) + char


def header_names(allow: Iterable[str]) -> dict[bytes, str]:
    """An allowlist of header names for :func:`masked_headers`: lower-case bytes to text."""
    return {name.lower().encode("latin-1"): name.lower() for name in allow}


def masked_headers(
    headers: Iterable[tuple[bytes, bytes]], allow: Mapping[bytes, str], masker: Masker
) -> dict[str, str]:
    """The allowlisted headers (``allow``: see :func:`header_names`), values masked; repeats
    joined with ", "."""
    out: dict[str, str] = {}
    for raw_name, raw_value in headers:
        name = allow.get(raw_name.lower())
        if name is not None:
            value = masker.mask_text(raw_value.decode("latin-1"))
            out[name] = f"{out[name]}, {value}" if name in out else value
    return out


def _decoded(prefix: bytes, encoding: str, cap: int) -> bytes | None:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return prefix
    if encoding not in ("gzip", "x-gzip", "deflate"):
        return None
    try:  # wbits 47: gzip or zlib header, detected; a cut stream decodes as far as it goes
        return zlib.decompressobj(wbits=47).decompress(prefix, cap * _MAX_DECODE_GROWTH)
    except zlib.error:
        return None


def _text(raw: bytes, *, truncated: bool) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        # a multi-byte character cut at the cap is not binary data
        if truncated and exc.start >= len(raw) - 3 and exc.reason == "unexpected end of data":
            return raw[: exc.start].decode("utf-8", "replace")
        return None


def _looks_json(content_type: str, text: str) -> bool:
    return "json" in content_type.lower() or text.lstrip()[:1] in ("{", "[")


def _mask_json(text: str, fields: JsonFieldMasker) -> str | None:
    try:
        document = json.loads(text)
    except ValueError:
        return None
    return json.dumps(fields.mask(document), ensure_ascii=False, separators=(",", ":"))
