"""Which result columns the PostgreSQL gateway masks, decided from a RowDescription. Sans-I/O.

Columns are matched **by their output name**, case-insensitively, against the column part of each
``mask_columns`` glob (``users.email`` and ``*.email`` both mask every result column named
``email``): over-masking a same-named column of another table is the safe side. A column renamed
in the query (``SELECT email AS e``) or computed from a masked one (``lower(email)``) is not
caught by name; value masking (``mask_values``) and database permissions cover those.

A masked value becomes ``[MASKED:column]`` in text columns, the JSON string ``"[MASKED:column]"``
in json/jsonb columns, and NULL in every other type and in binary format, so that clients that
parse the type (an integer, a date) still can.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from typing import Protocol

__all__ = ["MASKED_COLUMN", "ColumnMasker", "ColumnPlan"]

MASKED_COLUMN = b"[MASKED:column]"
_TEXT_TYPES = frozenset({18, 19, 25, 705, 1042, 1043})  # char, name, text, unknown, bpchar, varchar
_JSON_TYPES = frozenset({114, 3802})

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
    if field.format != 0:
        return None
    if field.type_oid in _TEXT_TYPES:
        return MASKED_COLUMN
    if field.type_oid in _JSON_TYPES:
        return b'"' + MASKED_COLUMN + b'"'
    return None
