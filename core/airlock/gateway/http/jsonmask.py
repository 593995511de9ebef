"""Mask JSON fields by name before a body is recorded (``mask_json_fields``).

A glob without a dot names a key at any depth (``password``); a dotted glob is a path from the
top, one part per level, ``*`` matching one key (``*.token``, ``data.user.email``). Arrays are
transparent: ``items.secret`` reaches ``{"items": [{"secret": …}]}``. The whole value of a
matching key is replaced, whatever its type.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Sequence
from typing import Any

__all__ = ["MASKED_FIELD", "JsonFieldMasker"]

MASKED_FIELD = "[MASKED:json-field]"
_WILD = frozenset("*?[")


class JsonFieldMasker:
    """Compiled ``mask_json_fields`` globs (matching is case-sensitive, like JSON keys)."""

    def __init__(self, globs: Sequence[str]) -> None:
        self._anywhere = [_compile(g) for g in globs if "." not in g]
        self._paths = [[_compile(p) for p in g.split(".")] for g in globs if "." in g]
        # The key each glob must end on, when it is a plain name: a document whose text names
        # none of them (quoted, no escapes left) has nothing to mask, and is not walked.
        lasts = [g.rsplit(".", 1)[-1] for g in globs]
        self._wild = any(_WILD & set(last) for last in lasts)
        quoted = [json.dumps(last, ensure_ascii=False) for last in lasts]
        # one search for any quoted name or a backslash
        self._gate = re.compile("|".join(re.escape(q) for q in [*quoted, "\\"]))
        #: any glob at all (else nothing is ever masked)
        self.enabled = bool(self._anywhere or self._paths)

    def might_match(self, text: str) -> bool:
        """False when no field of the JSON ``text`` can match (then :meth:`mask` changes
        nothing): every glob ends on a plain name that the text never quotes, and the text has
        no escape left that could spell one."""
        return self._wild or self._gate.search(text) is not None

    def __bool__(self) -> bool:
        return self.enabled

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
