"""The canonical literal matcher: every literal secret as a reader would see it.

One RE2 regex over all literal values: between any two bytes of a value, invisible sequences a
terminal does not show (ANSI/OSC escapes, 7-bit or UTF-8 C1 CSI, NUL, CR, DEL, a printable
character overstruck by a backspace) are allowed, a run of one byte may be written with CSI REP
(``ESC [ n b``: repeat the previous character), and each byte may be raw or
percent-encoded under any safe set; and every base64 form of a value with line breaks inside
(``_wrapped``). See docs/masking.md.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from typing import Any

import re2

from airlock.mask._compile import _LITERAL_MEM, MAX_RULE_LEN, CompiledRule, _re2
from airlock.mask._wrapped import wrapped_alternative, wrapped_match_ok
from airlock.mask.forms import base64_forms

__all__ = ["CANONICAL_SLACK", "build_canonical_rule"]

# What a terminal does not show between two characters of a secret: ANSI CSI (colours, cursor;
# ESC [ or the UTF-8 C1 CSI U+009B), OSC (titles, hyperlinks), two-byte ESC sequences, NUL, CR
# (a pty turns "\n" into "\r\n"), DEL (ignored), and one printable ASCII character followed by a
# backspace (the next character overstrikes it: `ab\bc` shows `ac`). Overstrikes of several
# characters (`xy\b\b`) or of a multi-byte character are not recognised (docs/masking.md).
_CSI = rb"(?:\x1b\[|\xc2\x9b)"
_ESCAPES = (
    _CSI + rb"[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]"
    rb"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"
    rb"|\x1b[\x20-\x2f]*[\x30-\x7e]|[\x00\r\x7f]"
)
_INVISIBLE = rb"(?:" + _ESCAPES + rb"|[\x20-\x7e]\x08)*"
# The same without the overstrike: it makes RE2 ~4x slower (any printable byte may begin it),
# and it can only match where there is a backspace; see _Overstrike.
_INVISIBLE_PLAIN = rb"(?:" + _ESCAPES + rb")*"
# CSI REP: the terminal repeats the previous graphic character n times (n = 0 or none: once).
_REP = _CSI + rb"[0-9]*b"
_REP_FULL = re.compile(_REP)
# 0x9b for the C1 CSI `c2 9b`: one byte is found by memchr (~1 us per 64 KiB), two bytes by a
# substring search ~60x slower, on every buffer; a stray 0x9b (CJK, emoji) costs a search.
_INVISIBLE_TRIGGERS = (b"\x1b", b"\x00", b"\x08", b"\x7f", b"\x9b")
CANONICAL_SLACK = 256
"""Bytes of invisible sequences a canonical match may hold beyond 3 bytes per secret byte."""
WRAPPED_MAX_VALUES = 64
"""Literal values up to which wrapped base64 forms are recognised (see _wrapped)."""
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _canonical_atom(byte: int) -> bytes:
    """One secret byte: itself or percent-encoded with either case (any ``safe`` set)."""
    raw: bytes = re2.escape(bytes((byte,)))
    if byte in _UNRESERVED:
        return raw
    hi, lo = (b"[%s%s]" % (c.encode(), c.upper().encode()) for c in f"{byte:02x}")
    plus = b"|\\+" if byte == 0x20 else b""
    return b"(?:" + raw + b"|%" + hi + lo + plus + b")"


class _Overstrike:
    """The canonical regex as the scanner calls it (``search``, ``match``): without the
    backspace overstrike on a buffer that holds no backspace (the two give the same matches
    there), with it, compiled on first need, otherwise."""

    def __init__(self, plain: Any, build_full: Callable[[], Any]) -> None:
        self.plain = plain
        self._build_full = build_full
        self._full: Any = None

    def _for(self, buf: bytes) -> Any:
        if b"\x08" not in buf:
            return self.plain
        if self._full is None:  # a race compiles it twice, to the same regex
            self._full = self._build_full()
        return self._full

    def search(self, buf: bytes, *pos: int) -> Any:
        return self._for(buf).search(buf, *pos)

    def match(self, buf: bytes, *pos: int) -> Any:
        return self._for(buf).match(buf, *pos)


def _canonical_value(value: bytes, invisible: bytes = _INVISIBLE) -> bytes:
    """``value`` as a terminal may show it: its atoms with invisible sequences between them; a
    run of one byte either written out or with a CSI REP standing for some of its copies."""
    parts: list[bytes] = []
    for byte, run in itertools.groupby(value):
        atom = _canonical_atom(byte)
        parts.append(atom)
        more = sum(1 for _ in run) - 1
        if more:
            parts.append(_repeated(atom, more, invisible))
    return invisible.join(parts)


def _repeated(atom: bytes, more: int, invisible: bytes) -> bytes:
    """``more`` further copies of ``atom``: written out, or with at least one REP among them (a
    REP's count is not checked, RE2 cannot count it: with a REP the run may show any length)."""
    written = invisible.join([atom] * more)
    either = b"(?:" + atom + b"|" + _REP + b")"
    with_rep = b"(?:" + atom + invisible + b")*" + _REP + b"(?:" + invisible + either + b")*"
    return b"(?:" + written + b"|" + with_rep + b")"


def build_canonical_rule(
    literals: Sequence[tuple[str, bytes]],
) -> tuple[CompiledRule | None, tuple[bytes, ...]]:
    """One regex for every literal value as a reader would see it: invisible sequences
    (``_INVISIBLE``) allowed between any two of its bytes, and each byte raw or percent-encoded
    under any safe set (``quote(v, safe="/")``, ``encodeURIComponent``, ``encodeURI`` …).

    A match covers the whole byte range, escapes included. Every match the exact literal
    alternation does not find holds one of the returned trigger bytes, so a buffer without them
    need not be searched (see ``LiteralSet.canonical_may_match``).
    """
    values: dict[bytes, str] = {}
    for rule_id, value in literals:
        values.setdefault(value, rule_id)
    if not values:
        return None, ()
    ordered = sorted(values, key=lambda v: (-len(v), v))
    alternatives = [b"(" + _canonical_value(value, _INVISIBLE_PLAIN) + b")" for value in ordered]
    names = [values[v] for v in ordered]
    triggers = set(_INVISIBLE_TRIGGERS)
    if any(0x0A in value for value in ordered):
        triggers.add(b"\r")  # a pty writes the value's "\n" as "\r\n"
    if any(b not in _UNRESERVED for value in ordered for b in value):
        triggers.add(b"%")
    if any(0x20 in value for value in ordered):
        triggers.add(b"+")
    max_len = min(MAX_RULE_LEN, 3 * len(ordered[0]) + CANONICAL_SLACK)
    max_mem = _LITERAL_MEM if len(ordered) > 64 else 64 << 20
    # Wrapped base64 forms come last: a match at the same start by a form above wins.
    wrapped = _wrapped_forms(ordered, values)
    first_wrapped = len(alternatives) + 1
    groups = range(first_wrapped, first_wrapped + len(wrapped))
    try:
        extra = [b"(" + wrapped_alternative(form) + b")" for form in wrapped]
        regex = _re2(b"|".join(alternatives + extra), max_mem=max_mem)
        names += wrapped.values()
    except re2.error:  # pragma: no cover - RE2's program size limit, kept away by the cap
        extra = []
        regex = _re2(b"|".join(alternatives), max_mem=max_mem)
        groups = range(0)

    def with_overstrike() -> Any:
        full = [b"(" + _canonical_value(value) + b")" for value in ordered]
        try:
            return _re2(b"|".join(full + extra), max_mem=max_mem)
        except re2.error:  # pragma: no cover - as above: without the overstrike, then
            return regex

    rule = CompiledRule(
        "literal",
        _Overstrike(regex, with_overstrike),
        max_len,
        group_names=tuple(names),
        check=lambda buf, match: wrapped_match_ok(buf, match, groups),
    )
    return rule, tuple(sorted(triggers))


def _wrapped_forms(ordered: Sequence[bytes], values: dict[bytes, str]) -> dict[bytes, str]:
    """Every base64 form of each value → its rule id; none past WRAPPED_MAX_VALUES values
    (each adds ~8 alternatives: more would make the regex slow to build, then too large)."""
    wrapped: dict[bytes, str] = {}
    if len(ordered) > WRAPPED_MAX_VALUES:
        return wrapped
    for value in ordered:
        for form in sorted(base64_forms(value), key=lambda f: (-len(f), f)):
            wrapped.setdefault(form, values[value])
    return wrapped


_INCOMPLETE = -1


def _invisible_len(buf: bytes, i: int) -> int:
    """Length of the invisible sequence at ``buf[i]``: 0 when there is none, _INCOMPLETE when
    ``buf`` ends inside one (what ``_INVISIBLE`` matches, read by hand)."""
    byte = buf[i]
    if byte in (0x00, 0x0D, 0x7F):
        return 1
    n, k = len(buf), i + 1
    if 0x20 <= byte <= 0x7E:  # overstruck when a backspace follows
        if k == n:
            return _INCOMPLETE
        return 2 if buf[k] == 0x08 else 0
    if byte == 0xC2:  # UTF-8 C1 CSI
        if k == n:
            return _INCOMPLETE
        return _csi_len(buf, i, k + 1) if buf[k] == 0x9B else 0
    if byte != 0x1B:
        return 0
    if k == n:
        return _INCOMPLETE
    if buf[k] == 0x5B:  # CSI: parameters, intermediates, a final byte
        return _csi_len(buf, i, k + 1)
    if buf[k] == 0x5D:  # OSC: up to BEL or ESC \
        end = min(j for j in (buf.find(b"\x07", k), buf.find(b"\x1b\\", k), n) if j >= 0)
        if end == n or (buf[end] == 0x1B and end + 1 == n):
            return _INCOMPLETE
        return end + (1 if buf[end] == 0x07 else 2) - i
    while k < n and 0x20 <= buf[k] <= 0x2F:
        k += 1
    if k == n:
        return _INCOMPLETE
    return k + 1 - i if 0x30 <= buf[k] <= 0x7E else 0


def _csi_len(buf: bytes, i: int, k: int) -> int:
    """Length of the CSI sequence at ``buf[i]`` whose parameters start at ``k``."""
    n = len(buf)
    while k < n and 0x30 <= buf[k] <= 0x3F:
        k += 1
    while k < n and 0x20 <= buf[k] <= 0x2F:
        k += 1
    if k == n:
        return _INCOMPLETE
    return k + 1 - i if 0x40 <= buf[k] <= 0x7E else 0


def _byte_at(buf: bytes, i: int, want: int) -> int:
    """How many bytes of ``buf`` at ``i`` spell ``want`` (raw, ``%XX``, ``+`` for a space):
    0 when they do not, _INCOMPLETE when ``buf`` ends inside a ``%XX`` that could."""
    if buf[i] == want:
        return 1
    if want == 0x20 and buf[i] == 0x2B:
        return 1
    if buf[i] != 0x25:
        return 0
    digits = b"%02x" % want
    got = buf[i + 1 : i + 3].lower()
    if len(got) < 2:
        return _INCOMPLETE if digits.startswith(got) else 0
    return 3 if got == digits else 0


def _prefix_from(buf: bytes, i: int, value: bytes, j: int = 0) -> bool:
    """True when ``buf[i:]`` (to its end) is a proper prefix of a canonical rendering of
    ``value`` (``j`` of its bytes already read): the stream may be cut inside that rendering."""
    n = len(buf)
    while i < n:
        if j:
            skip = _invisible_len(buf, i)
            if skip == _INCOMPLETE:
                return True
            if skip:
                if _REP_FULL.fullmatch(buf, i, i + skip) and any(
                    _prefix_from(buf, i + skip, value, j + k)
                    for k in range(1, _run_left(value, j) + 1)
                ):
                    return True
                i += skip
                continue
        if j == len(value):
            return False  # the whole value is there: the rule decides it, not the hold
        step = _byte_at(buf, i, value[j])
        if step == _INCOMPLETE:
            return True
        if not step:
            return False
        i, j = i + step, j + 1
    return 0 < j < len(value)


def _run_left(value: bytes, j: int) -> int:
    """How many bytes from ``value[j]`` on repeat ``value[j - 1]`` (what a REP may stand for)."""
    k = j
    while k < len(value) and value[k] == value[j - 1]:
        k += 1
    return k - j


_HOLD_TRIGGERS = (b"\x1b", b"\x00", b"\r", b"%", b"+", b"\x08", b"\x7f", b"\xc2")


def canonical_held(tail: bytes, values: Sequence[bytes], reach: int) -> int:
    """Length of the longest suffix of ``tail`` (within ``reach``) that could begin a canonical
    match not finished yet: a literal value with invisible sequences or percent escapes, cut
    by the end of ``tail``. 0 when ``tail`` has no byte only such a rendering would hold."""
    window = tail[-reach:]
    if not any(t in window for t in _HOLD_TRIGGERS):
        # Any prefix here is a prefix of the value itself (an exact form), unless the last
        # byte is a printable character a backspace still to come would overstrike.
        if not window or not 0x20 <= window[-1] <= 0x7E:
            return 0
        window = window[-(max(map(len, values), default=0) + 1) :]
    firsts = {v[0] for v in values} | {0x25}
    for i in range(len(window)):
        if window[i] in firsts and any(_prefix_from(window, i, v) for v in values):
            return len(window) - i
    return 0
