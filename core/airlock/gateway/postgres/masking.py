"""Which result columns the PostgreSQL gateway masks, decided from a RowDescription. Sans-I/O.

Columns are matched **by their output name**, case-insensitively, against the column part of each
``mask_columns`` glob (``users.email`` and ``*.email`` both mask every result column named
``email``): over-masking a same-named column of another table is the safe side. A column renamed
in the query (``SELECT email AS e``) or computed from a masked one (``lower(email)``) is not
caught by name; value masking (``mask_values``) and database permissions cover those.

A masked value becomes a value of the column's own type, in the format the client asked for
(the Bind's result formats, not the RowDescription's, which says "text" for a described
statement): ``[MASKED:column]`` in text-like columns (text, varchar, char(n), name, and bytea
holding those bytes), the JSON string ``"[MASKED:column]"`` in json/jsonb (binary jsonb with its
version byte), a one-element array of that in arrays of those types, an empty array in other
arrays, and NULL in every other type (an integer, a date: no value of the type can say "masked",
and a made-up one would be believed; the relay tells the client in a NOTICE).
"""

from __future__ import annotations

import fnmatch
import re
import struct
from collections.abc import Sequence
from typing import Protocol

__all__ = ["MASKED_COLUMN", "ColumnMasker", "ColumnPlan", "replacement"]

MASKED_COLUMN = b"[MASKED:column]"
_TEXT_TYPES = frozenset({19, 25, 705, 1042, 1043})  # name, text, unknown, bpchar, varchar
_JSON, _JSONB, _BYTEA = 114, 3802, 17
# array type oid -> element type oid (pg_type.typarray), for the types masking knows
_ARRAYS = {
    1003: 19, 1009: 25, 1014: 1042, 1015: 1043, 199: _JSON, 3807: _JSONB, 1001: _BYTEA,
    1000: 16, 1005: 21, 1007: 23, 1016: 20, 1021: 700, 1022: 701, 1231: 1700, 2951: 2950,
    1182: 1082, 1115: 1114, 1185: 1184, 1183: 1083, 1270: 1266, 1187: 1186,
}  # fmt: skip

ColumnPlan = tuple[tuple[bool, bytes | None], ...]
"""Per column: (masked?, replacement; None means NULL)."""


class _FieldLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def type_oid(self) -> int: ...
    @property
    def format(self) -> int: ...


class ColumnMasker:
    """Compiled ``mask_columns`` globs: :meth:`plan` says what to do with each result column."""

    def __init__(self, globs: Sequence[str]) -> None:
        names = {glob.rpartition(".")[2] for glob in globs}
        pattern = "|".join(fnmatch.translate(name) for name in sorted(names))
        self._regex = re.compile(pattern, re.IGNORECASE) if names else None
        self.active = names != set()
        self._cache: dict[tuple[tuple[str, int, int], ...], ColumnPlan | None] = {}

    def plan(self, fields: Sequence[_FieldLike]) -> ColumnPlan | None:
        """The masking plan for a result with ``fields``; None when no column is masked."""
        if self._regex is None:
            return None
        key = tuple((f.name, f.type_oid, f.format) for f in fields)
        if key not in self._cache:
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[key] = self._build(fields)
        return self._cache[key]

    def _build(self, fields: Sequence[_FieldLike]) -> ColumnPlan | None:
        assert self._regex is not None
        plan = tuple(
            (True, _replacement(f)) if self._regex.match(f.name) else (False, None) for f in fields
        )
        return plan if any(masked for masked, _ in plan) else None


def _replacement(field: _FieldLike) -> bytes | None:
    element = _ARRAYS.get(field.type_oid)
    if element is not None:
        return _array(element, field.format)
    return replacement(field.type_oid, field.format)


def replacement(type_oid: int, fmt: int) -> bytes | None:
    """The masked value of a scalar of type ``type_oid`` in format ``fmt`` (0 text, 1 binary);
    None: NULL."""
    if type_oid in _TEXT_TYPES:
        return MASKED_COLUMN
    if type_oid == _JSON or (type_oid == _JSONB and fmt == 0):
        return b'"' + MASKED_COLUMN + b'"'
    if type_oid == _JSONB:
        return b'\x01"' + MASKED_COLUMN + b'"'  # binary jsonb: version 1, then the text
    if type_oid == _BYTEA:
        return MASKED_COLUMN if fmt else b"\\x" + MASKED_COLUMN.hex().encode()
    return None


def _array(element: int, fmt: int) -> bytes:
    value = replacement(element, fmt)
    if fmt == 0:
        if value is None:
            return b"{}"
        return b'{"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"}'
    if value is None:  # binary: no dimensions, no NULLs, the element type
        return struct.pack("!iiI", 0, 0, element)
    return struct.pack("!iiIiii", 1, 0, element, 1, 1, len(value)) + value
