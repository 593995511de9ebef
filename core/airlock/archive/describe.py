"""Descriptions of events for the archive's views: the describer lives in ``airlock.audit``.

Kept so that ``airlock.archive.describe`` imports go on working; new code uses
:class:`airlock.audit.describe.Describer`, which knows what earlier events of the session said
(an approval decision names the rule of its request).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airlock.audit.describe import Describer, output_text, strip_ansi, truncate

__all__ = ["describe", "net_text", "output_text", "strip_ansi", "truncate"]


def describe(event: Mapping[str, Any], limit: int = 200) -> str:
    """A one-line description of ``event`` on its own (at most ``limit`` characters)."""
    return Describer().describe(event, limit)


def net_text(data: Mapping[str, Any]) -> str:
    """The description of a ``net.connect`` event's data."""
    return Describer().view({"type": "net.connect", "data": data}).summary
