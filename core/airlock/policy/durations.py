"""Durations in policy and config files: an integer of seconds, or ``90s``, ``15m``, ``1h30m``."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, WithJsonSchema

__all__ = ["Duration", "parse_duration"]

_DURATION_PATTERN = r"^(\d+h)?(\d+m)?(\d+s)?$"
_DURATION_RE = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(value: Any) -> int:
    """Seconds (>= 0) from an integer or a string like ``90s``, ``15m``, ``1h30m``."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like 15m, 1h, 90s")
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str) and (match := _DURATION_RE.match(value.strip())) and value.strip():
        hours, minutes, secs = (int(part or 0) for part in match.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    else:
        raise ValueError("a duration is a number of seconds or a string like 15m, 1h, 90s")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


Duration = Annotated[
    int,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": _DURATION_PATTERN, "minLength": 2},
                {"type": "integer", "minimum": 0},
            ],
            "description": "seconds, or a duration such as 90s, 15m, 1h30m",
        }
    ),
]
