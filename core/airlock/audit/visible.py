"""Text an agent wrote, made safe to show to a human on a forge, a summary or a terminal.

Bidi controls (U+202A-U+202E, U+2066-U+2069), zero-width characters (U+200B-U+200F, U+2060,
U+FEFF), tag characters, other format (Cf) and control (Cc) characters, and line/paragraph
separators can make a reader see another text than the one held: ``DROP TABLE users`` shown
as something harmless, an ``/airlock approve`` line that is not where it seems. Each one is
written as a visible escape (``\\u202e``, ``\\x1b``) instead; ``\\n`` and ``\\t`` stay.
Fillers that render as blank (Hangul fillers, the Braille blank) are escaped too.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import Any

__all__ = ["is_invisible", "visible", "visible_json"]

_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})
_BLANK_LETTERS = frozenset({"\u115f", "\u1160", "\u3164", "\uffa0", "\u2800", "\u034f"})


def is_invisible(char: str) -> bool:
    """True for a character that changes or hides what a reader sees (not ``\\n``/``\\t``)."""
    if char in "\n\t":
        return False
    if char.isascii():
        return not char.isprintable()
    return unicodedata.category(char) in _HIDDEN_CATEGORIES or char in _BLANK_LETTERS


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def visible(text: str) -> str:
    """``text`` with every invisible character written as a visible escape."""
    if text.isascii() and text.isprintable():
        return text  # the common case, at no cost
    return "".join(_escape(c) if is_invisible(c) else c for c in text)


def visible_json(value: Any) -> Any:
    """Every string (keys too) in a JSON-like value made :func:`visible`."""
    if isinstance(value, str):
        return visible(value)
    if isinstance(value, Mapping):
        return {visible(str(k)): visible_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [visible_json(v) for v in value]
    return value
