"""The canonical literal matcher: every literal secret as a reader would see it.

One RE2 regex over all literal values: between any two bytes of a value, invisible sequences a
terminal does not show (ANSI/OSC escapes, NUL, CR) are allowed, and each byte may be raw or
percent-encoded under any safe set. See docs/masking.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import re2

from airlock.mask._compile import _LITERAL_MEM, MAX_RULE_LEN, CompiledRule, _re2

__all__ = ["CANONICAL_SLACK", "build_canonical_rule"]

# What a terminal does not show between two characters of a secret: ANSI CSI (colours, cursor),
# OSC (titles, hyperlinks), two-byte ESC sequences, NUL, and CR (a pty turns "\n" into "\r\n").
_INVISIBLE = (
    rb"(?:\x1b\[[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]"
    rb"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"
    rb"|\x1b[\x20-\x2f]*[\x30-\x7e]|\x00|\r)*"
)
_INVISIBLE_TRIGGERS = (b"\x1b", b"\x00")
CANONICAL_SLACK = 256
"""Bytes of invisible sequences a canonical match may hold beyond 3 bytes per secret byte."""
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _canonical_atom(byte: int) -> bytes:
    """One secret byte: itself or percent-encoded with either case (any ``safe`` set)."""
    raw: bytes = re2.escape(bytes((byte,)))
    if byte in _UNRESERVED:
        return raw
    hi, lo = (b"[%s%s]" % (c.encode(), c.upper().encode()) for c in f"{byte:02x}")
    plus = b"|\\+" if byte == 0x20 else b""
    return b"(?:" + raw + b"|%" + hi + lo + plus + b")"


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
    alternatives = [
        b"(" + _INVISIBLE.join(_canonical_atom(b) for b in value) + b")" for value in ordered
    ]
    triggers = set(_INVISIBLE_TRIGGERS)
    if any(0x0A in value for value in ordered):
        triggers.add(b"\r")  # a pty writes the value's "\n" as "\r\n"
    if any(b not in _UNRESERVED for value in ordered for b in value):
        triggers.add(b"%")
    if any(0x20 in value for value in ordered):
        triggers.add(b"+")
    max_len = min(MAX_RULE_LEN, 3 * len(ordered[0]) + CANONICAL_SLACK)
    regex = _re2(b"|".join(alternatives), max_mem=_LITERAL_MEM if len(ordered) > 64 else 64 << 20)
    rule = CompiledRule("literal", regex, max_len, group_names=tuple(values[v] for v in ordered))
    return rule, tuple(sorted(triggers))
