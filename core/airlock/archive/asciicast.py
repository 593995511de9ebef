"""Terminal output with its timing, as asciicast v2 and as replay frames for the report.

Every ``output`` event carries its bytes (masked) and its ``ts``; the time of a frame is its
``ts`` minus the session's start. asciicast v2 (https://docs.asciinema.org/manual/asciicast/v2/)
is a header line, then one ``[seconds, "o", text]`` line per chunk: ``asciinema play`` and
asciinema-player replay it. Nothing else of the session is put in it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from airlock.audit.describe import output_text

__all__ = ["frames", "to_asciicast"]

_WIDTH, _HEIGHT = 120, 40


def _moment(ts: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(ts).replace("Z", "+00:00"))
    except ValueError:
        return None


def frames(events: Iterable[dict[str, Any]]) -> Iterator[tuple[float, str]]:
    """``(seconds since the session started, text)`` for every output event, in order."""
    start: datetime | None = None
    for event in events:
        moment = _moment(event.get("ts"))
        if start is None and moment is not None:
            start = moment
        if event.get("type") != "output" or not isinstance(event.get("data"), dict):
            continue
        text = output_text(event["data"])
        if text and moment is not None and start is not None:
            yield max(0.0, (moment - start).total_seconds()), text


def to_asciicast(events: Iterable[dict[str, Any]], session_id: str = "") -> Iterator[str]:
    """The lines of an asciicast v2 file (without newlines)."""
    listed = list(events)
    start = next((_moment(e.get("ts")) for e in listed if _moment(e.get("ts"))), None)
    header: dict[str, Any] = {"version": 2, "width": _WIDTH, "height": _HEIGHT}
    if start is not None:
        header["timestamp"] = int(start.timestamp())
    if session_id:
        header["title"] = f"Airlock session {session_id}"
    header["env"] = {"TERM": "xterm-256color"}
    yield json.dumps(header, ensure_ascii=False)
    for seconds, text in frames(listed):
        yield json.dumps([round(seconds, 6), "o", text], ensure_ascii=False)
