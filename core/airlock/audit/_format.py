"""The byte layout of a session, shared by the writer, the sealer and the verifier.

A line is ``{"seq":N,"ts":"…","type":"…","prev":"<hex>","data":{…}}`` with the keys in that order
and nothing else, so the verifier can check seq and prev with one anchored match per line instead
of decoding the JSON. ``prev`` is the SHA-256 of the previous line's bytes without its ``\\n``;
line 1 chains to ``SHA-256(b"airlock-genesis:" + session_id)``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import threading
from collections.abc import Callable, Mapping
from json.encoder import c_encode_basestring, c_make_encoder  # type: ignore[attr-defined]
from typing import Any, Final

__all__ = [
    "EVENTS_FILE",
    "FORMAT",
    "HEX64_RE",
    "LINE_RE",
    "MANIFEST_FILE",
    "SESSION_ID_RE",
    "TYPE_RE",
    "canonical_json",
    "encode_data",
    "encode_line",
    "encode_small",
    "entry_pieces",
    "genesis",
    "join_entry",
    "line_hash",
    "surely_encodes",
]

FORMAT: Final = "airlock-session/1"
EVENTS_FILE: Final = "events.jsonl"
MANIFEST_FILE: Final = "manifest.json"
_GENESIS_PREFIX: Final = b"airlock-genesis:"

# A session id is one safe path component: it names a directory and an S3 key segment.
SESSION_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
TYPE_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
HEX64_RE: Final = re.compile(r"[0-9a-f]{64}")
# One whole line, as the writer lays it out. Group 1: seq, group 2: prev. ``.*`` with DOTALL
# jumps to the end of the line, so the match costs the same for a 100-byte or a 1-MB line.
LINE_RE: Final = re.compile(
    rb'\{"seq":(0|[1-9][0-9]{0,18}),"ts":"[^"\\]*","type":"[A-Za-z0-9._:-]+",'
    rb'"prev":"([0-9a-f]{64})","data":\{.*\}\}',
    re.DOTALL,
)


def genesis(session_id: str) -> str:
    """The value line 1's ``prev`` chains to: binds the log to its session id."""
    return hashlib.sha256(_GENESIS_PREFIX + session_id.encode("utf-8")).hexdigest()


def line_hash(line: bytes | memoryview) -> str:
    """SHA-256 hex of one line's exact bytes, without the trailing newline."""
    return hashlib.sha256(line).hexdigest()


_ENCODE_UTF8 = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_ENCODE_ASCII = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode
_PLAIN = re.compile(r"[A-Za-z0-9._:+-]*")  # strings that need no JSON escaping


# Control bytes that the fast path does not handle (it handles \t \n \r and ESC).
_SLOW_CONTROLS: Final = bytes(b for b in range(32) if b not in (9, 10, 13, 27))
_FAST_MIN = 4096  # below this the json module is as fast


def _has_slow_controls(raw: bytes) -> bool:
    """Whether ``raw`` holds one of ``_SLOW_CONTROLS``: hyperscan (~10 GB/s, without the GIL)
    when it is installed, else bytes.translate (~1.5 GB/s)."""
    scan = _control_scanner()
    if scan is None:
        return len(raw.translate(None, _SLOW_CONTROLS)) != len(raw)
    return scan(raw)


@functools.cache
def _control_scanner() -> Callable[[bytes], bool] | None:
    try:
        import hyperscan
    except ImportError:
        return None
    try:
        db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
        db.compile(
            expressions=[rb"[\x00-\x08\x0b\x0c\x0e-\x1a\x1c-\x1f]"],
            ids=[0],
            elements=1,
            flags=[hyperscan.HS_FLAG_SINGLEMATCH],
        )
    except hyperscan.error:
        return None
    local = threading.local()  # scratch space is per thread

    def scan(raw: bytes) -> bool:
        scratch = getattr(local, "scratch", None)
        if scratch is None:
            scratch = local.scratch = hyperscan.Scratch(db)
        found: list[int] = []
        db.scan(raw, match_event_handler=lambda *_: found.append(1), scratch=scratch)
        return bool(found)

    return scan


@functools.cache
def _orjson_dumps() -> Callable[[str], bytes] | None:
    """orjson's ``dumps`` (``airlock-ci[fast]``) when it imports: the json module's exact bytes
    for a ``str`` (``ensure_ascii=False``), at ~2.3 GB/s against ~1 GB/s for the fallback."""
    try:
        import orjson
    except ImportError:
        return None
    dumps: Callable[[str], bytes] = orjson.dumps
    return dumps


def _fast_string(value: str) -> list[bytes] | None:
    """JSON for a large string of ordinary text (terminal output), as pieces to join.

    orjson when installed, else ~2x the json module. None when the text holds a lone surrogate
    or (without orjson) a control byte other than tab, CR, LF or ESC: the json module then
    does it.
    """
    dumps = _orjson_dumps()
    if dumps is not None:
        try:
            return [dumps(value)]
        except TypeError:  # orjson.JSONEncodeError: a lone surrogate
            return None
    return _replace_string(value)


def _replace_string(value: str) -> list[bytes] | None:
    """:func:`_fast_string` without orjson: a few ``bytes.replace`` passes."""
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    if _has_slow_controls(raw):
        return None
    # bytes.replace returns the very same object when there is nothing to replace.
    raw = (
        raw.replace(b"\\", b"\\\\")
        .replace(b'"', b'\\"')
        .replace(b"\n", b"\\n")
        .replace(b"\t", b"\\t")
        .replace(b"\r", b"\\r")
        .replace(b"\x1b", b"\\u001b")
    )
    return [b'"', raw, b'"']


def _dump_flat(data: Mapping[str, Any]) -> list[bytes] | None:
    """The common event shape, a flat object of short values and one big text, done fast."""
    parts = [b"{"]
    for key, value in data.items():
        if len(parts) > 1:
            parts.append(b",")
        parts.append(_string(key).encode("utf-8") + b":")
        if isinstance(value, str) and len(value) >= _FAST_MIN:
            encoded = _fast_string(value)
            if encoded is None:
                return None
            parts += encoded
        elif isinstance(value, str | int | bool | None) and not isinstance(value, float):
            parts.append(_ENCODE_UTF8(value).encode("utf-8"))
        else:
            return None
    parts.append(b"}")
    return parts


def _not_serialisable(value: object) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _c_encoder() -> Callable[[Any], str] | None:
    """The json module's C encoder, made once (``JSONEncoder.encode`` makes one per call).

    No circular-reference check (``markers`` None): a self-referencing value raises
    RecursionError instead of ValueError, and nothing is written either way.
    """
    if c_make_encoder is None or c_encode_basestring is None:  # a Python without _json
        return None
    make = c_make_encoder(
        None, _not_serialisable, c_encode_basestring, None, ":", ",", False, False, False
    )

    def encode(obj: Any) -> str:
        return "".join(make(obj, 0))

    return encode


_ENCODE_SMALL: Final = _c_encoder() or _ENCODE_UTF8


def encode_small(data: Mapping[str, Any]) -> str | None:
    """The ``data`` object of a line as text that encodes to UTF-8, or None when a value is a
    big string (:func:`encode_data` does those faster).

    The common event (a few short values) in one pass of the json module's C encoder: the
    same bytes as :func:`encode_data`, as text so the writer encodes the whole line once.
    """
    for value in data.values():
        if isinstance(value, str) and len(value) >= _FAST_MIN:
            return None
    text = _ENCODE_SMALL(data if type(data) is dict else dict(data))
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return _ENCODE_ASCII(dict(data))  # lone surrogates, as in _dump_parts
    return text


def surely_encodes(data: Mapping[str, Any]) -> bool:
    """Whether ``data`` is a flat object with a big string (the shape of an output event)
    whose :func:`encode_data` cannot raise: str keys; str, int, bool and None values only (a
    lone surrogate is escaped, not refused)."""
    big = False
    for key, value in data.items():
        if type(key) is not str:
            return False
        if type(value) is str:
            big = big or len(value) >= _FAST_MIN
        elif not (value is None or type(value) is int or type(value) is bool):
            return False
    return big


def _dump_parts(data: Mapping[str, Any]) -> list[bytes]:
    if any(isinstance(v, str) and len(v) >= _FAST_MIN for v in data.values()):
        try:
            fast = _dump_flat(data)
        except UnicodeEncodeError:
            fast = None
        if fast is not None:
            return fast
    obj = dict(data)
    try:
        return [_ENCODE_UTF8(obj).encode("utf-8")]
    except UnicodeEncodeError:
        # Lone surrogates (undecodable bytes carried as str) cannot be UTF-8: escape them as
        # \udcXX. The line stays valid JSON and nothing recorded is dropped.
        return [_ENCODE_ASCII(obj).encode("ascii")]


def _dump_data(data: Mapping[str, Any]) -> bytes:
    return b"".join(_dump_parts(data))


def _string(value: str) -> str:
    return f'"{value}"' if _PLAIN.fullmatch(value) else json.dumps(value)


def _head(seq: int, ts: str, type_: str, prev: str) -> bytes:
    text = f'{{"seq":{seq:d},"ts":{_string(ts)},"type":{_string(type_)},"prev":"{prev}","data":'
    return text.encode("ascii")


def encode_line(seq: int, ts: str, type_: str, prev: str, data: Mapping[str, Any]) -> bytes:
    """One event line in the fixed key order, without the trailing newline."""
    return b"".join([_head(seq, ts, type_, prev), *_dump_parts(data), b"}"])


def encode_data(data: Mapping[str, Any]) -> list[bytes]:
    """The ``data`` object of a line, as pieces for :func:`join_entry` (raises if it is not
    JSON-serialisable)."""
    return _dump_parts(data)


def join_entry(seq: int, ts: str, type_: str, prev: str, data: list[bytes]) -> bytes:
    """:func:`encode_line` of encoded ``data``, with its ``\\n``, built in one copy (output
    lines are megabytes)."""
    return b"".join(entry_pieces(seq, ts, type_, prev, data))


def entry_pieces(seq: int, ts: str, type_: str, prev: str, data: list[bytes]) -> list[bytes]:
    """The pieces :func:`join_entry` joins, the last one ``b"}\\n"``: to write with ``writev``
    and hash piece by piece instead (a big line is then never copied whole)."""
    return [_head(seq, ts, type_, prev), *data, b"}\n"]


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, compact, UTF-8: the bytes a manifest signature covers."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")
