"""Is a literal secret value fit to be masked? A value that is an ordinary word or number would
mask that word everywhere (and the marker's context would give the value away)."""

from __future__ import annotations

import re

__all__ = ["weak_reason"]

_WORD = re.compile(rb"[A-Za-z]{1,12}")
_NUMBER = re.compile(rb"[0-9]{1,7}")
_COMMON = frozenset(
    b"""true false null none yes no on off admin root user test password passwd secret
    changeme default example localhost main master token guest letmein qwerty welcome""".split()
)


def weak_reason(value: bytes) -> str | None:
    """Why ``value`` would mask common text, or None when it looks like a real secret."""
    if value.strip().lower() in _COMMON:
        return "is a common word"
    if _WORD.fullmatch(value):
        return "is a single short word (letters only)"
    if _NUMBER.fullmatch(value):
        return "is a short number"
    if len(set(value)) == 1:
        return "repeats one character"
    return None
