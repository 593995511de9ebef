"""Mask JSON fields by name before a body is recorded (``mask_json_fields``).

A glob without a dot names a key at any depth (``password``); a dotted glob is a path from the
top, one part per level, ``*`` matching one key (``*.token``, ``data.user.email``). Arrays are
transparent: ``items.secret`` reaches ``{"items": [{"secret": …}]}``. The whole value of a
matching key is replaced, whatever its type.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from typing import Any

__all__ = ["MASKED_FIELD", "JsonFieldMasker"]

MASKED_FIELD = "[MASKED:json-field]"


class JsonFieldMasker:
    """Compiled ``mask_json_fields`` globs (matching is case-sensitive, like JSON keys)."""

    def __init__(self, globs: Sequence[str]) -> None:
        self._anywhere = [_compile(g) for g in globs if "." not in g]
        self._paths = [[_compile(p) for p in g.split(".")] for g in globs if "." in g]

    def __bool__(self) -> bool:
        return bool(self._anywhere or self._paths)

    def mask(self, document: Any) -> Any:
        """A copy of ``document`` with every matching field's value replaced."""
        return self._walk(document, ())

    def _walk(self, node: Any, path: tuple[str, ...]) -> Any:
        if isinstance(node, dict):
            return {
                key: MASKED_FIELD if self._hit((*path, key)) else self._walk(value, (*path, key))
                for key, value in node.items()
            }
        if isinstance(node, list):
            return [self._walk(item, path) for item in node]
        return node

    def _hit(self, path: tuple[str, ...]) -> bool:
        if any(rx.fullmatch(path[-1]) for rx in self._anywhere):
            return True
        return any(
            len(parts) == len(path)
            and all(rx.fullmatch(k) for rx, k in zip(parts, path, strict=True))
            for parts in self._paths
        )


def _compile(glob: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(glob), re.DOTALL)
