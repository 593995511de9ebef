"""Wrapped base64: a literal's base64 forms with line breaks inside, as ``base64`` (coreutils,
76 columns), ``openssl base64`` (64) and PEM/MIME writers print a file that holds a secret.

The forms are alternatives of the canonical regex with an optional ``\\r?\\n`` between any two
characters. A line break inside a match is taken as wrapping only when the whole line before it
is ``MIN_WRAP`` to ``MAX_WRAP`` base64 characters (checked for the first break of each match):
ordinary text breaks lines after words, wrapped base64 never does. That rule also keeps the
search cheap: the canonical regex runs for a wrapped form only on a buffer holding such a line
(``may_hold_wrapped``), and the stream keeps ``MAX_WRAP + 2`` bytes before its frontier so a
streamed buffer judges a line as the whole stream does. See docs/masking.md.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Any

import re2

from airlock.mask._compile import WRAPPED_LINE

__all__ = [
    "MAX_WRAP",
    "MIN_WRAP",
    "may_hold_wrapped",
    "wrapped_alternative",
    "wrapped_held",
    "wrapped_match_ok",
]

MIN_WRAP = 16
"""Narrowest line (base64 characters) whose break counts as wrapping."""
MAX_WRAP = 128
"""Widest such line (coreutils wraps at 76, openssl and PEM at 64)."""
_B64 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/_-")
_BREAK = rb"(?:\r?\n)?"
_LINE = re2.compile(WRAPPED_LINE)


def wrapped_alternative(form: bytes) -> bytes:
    """``form`` with an optional line break between any two of its characters (a regex)."""
    return _BREAK.join(re2.escape(form[i : i + 1]) for i in range(len(form)))


def may_hold_wrapped(buf: bytes) -> bool:
    """True when ``buf`` has a line that wrapping could have made (a superset: see MIN_WRAP);
    the line may start at the start of ``buf``."""
    return _LINE.search(buf) is not None


def wrapped_match_ok(buf: bytes, match: Any, groups: Iterable[int]) -> bool:
    """False for a match of a wrapped alternative (one of ``groups``) whose first line break
    does not end a line of MIN_WRAP to MAX_WRAP base64 characters. ``buf`` starts at the
    stream's start or at least MAX_WRAP + 1 bytes before the match."""
    if not any(match.start(g) >= 0 for g in groups):
        return True
    start, end = match.span()
    newline = buf.find(b"\n", start, end)
    if newline < 0:
        return True  # no break: an exact form
    line_end = newline - 1 if newline > 0 and buf[newline - 1] == 0x0D else newline
    line = buf[buf.rfind(b"\n", 0, line_end) + 1 : line_end]
    return MIN_WRAP <= len(line) <= MAX_WRAP and all(byte in _B64 for byte in line)


def wrapped_held(tail: bytes, forms: Sequence[bytes], reach: int) -> int:
    """Length of the longest suffix of ``tail`` (within ``reach``) that is a proper prefix of
    a base64 form in ``forms`` (sorted) once its line breaks are removed, and holds one."""
    window = tail[-reach:]
    last_break = window.rfind(b"\n")
    if last_break < 0 or not forms:
        return 0
    i = len(window)
    while i > 0 and (window[i - 1] in _B64 or window[i - 1] in (0x0A, 0x0D)):
        i -= 1
    for start in range(i, last_break):
        if window[start] not in _B64:
            continue
        joined = window[start:].replace(b"\r", b"").replace(b"\n", b"")
        k = bisect_left(forms, joined)
        while k < len(forms) and forms[k].startswith(joined):
            if len(forms[k]) > len(joined):
                return len(window) - start
            k += 1
    return 0
