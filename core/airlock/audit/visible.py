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


def is_invisible(char: str, *, controls: bool = True) -> bool:
    """True for a character that changes or hides what a reader sees (not ``\\n``/``\\t``).
    With ``controls=False``, control characters (C0, DEL, C1) are not counted: for a view that
    handles them itself (a terminal replay reading ANSI escapes, text put in a page as text)."""
    if char in "\n\t":
        return False
    category = unicodedata.category(char)
    if category == "Cc":
        return controls
    return category in _HIDDEN_CATEGORIES or char in _BLANK_LETTERS


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def visible(text: str, *, controls: bool = True) -> str:
    """``text`` with every invisible character written as a visible escape (control
    characters left as they are with ``controls=False``, see :func:`is_invisible`)."""
    if text.isascii() and (text.isprintable() or not controls):
        return text  # the common case, at no cost
    return "".join(_escape(c) if is_invisible(c, controls=controls) else c for c in text)


def visible_json(value: Any, *, controls: bool = True) -> Any:
    """Every string (keys too) in a JSON-like value made :func:`visible`."""
    if isinstance(value, str):
        return visible(value, controls=controls)
    if isinstance(value, Mapping):
        return {
            visible(str(k), controls=controls): visible_json(v, controls=controls)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [visible_json(v, controls=controls) for v in value]
    return value
