"""Server-sent events, sans-I/O: bytes in, whole events out, each with its exact bytes.

The gateway forwards every event as the bytes it came as (so the agent's SDK sees the
provider's stream unchanged) and reads its ``event:`` / ``data:`` fields to assemble the
response. Parsing follows the WHATWG rules that matter here: lines end in CRLF, LF or CR; a blank
line ends an event; ``data:`` lines join with LF; one space after the colon is dropped; comment
lines (``:``) and unknown fields are kept in the raw bytes but carry no data. A stream that ends
without a blank line yields its last event from :meth:`SseParser.close`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["SseEvent", "SseParser"]

_LINE_END = re.compile(rb"\r\n|\r|\n")
_TEXT_LINE_END = re.compile(r"\r\n|\r|\n")
_MAX_EVENT = 64 * 1024 * 1024  # one event larger than this is malformed input, not a stream


@dataclass(frozen=True)
class SseEvent:
    """One event: ``event`` name ('' when absent), joined ``data``, and the exact ``raw`` bytes."""

    event: str
    data: str
    raw: bytes


class SseError(ValueError):
    """The stream is not server-sent events (an event past the size cap)."""


class SseParser:
    """Feed bytes with :meth:`feed`; get the events they complete."""

    def __init__(self, max_event: int = _MAX_EVENT) -> None:
        self._buffer = b""
        self._max = max_event
        self._scanned = 0  # bytes of the buffer known to hold no event end (minus a margin)

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """The events that ``chunk`` completes (possibly none)."""
        self._buffer += chunk
        events = []
        while True:
            end = _event_end(self._buffer, max(0, self._scanned - 4))
            if end is None:
                self._scanned = len(self._buffer)
                break
            raw, self._buffer = self._buffer[:end], self._buffer[end:]
            self._scanned = 0
            events.append(_parse(raw))
        if len(self._buffer) > self._max:
            raise SseError(f"an event of more than {self._max} bytes")
        return events

    def close(self) -> list[SseEvent]:
        """The unterminated last event, if the stream ended mid-event."""
        raw, self._buffer = self._buffer, b""
        return [_parse(raw)] if raw.strip() else []


def _event_end(buffer: bytes, start: int) -> int | None:
    """Index just past the blank line that ends the first event, or None. ``start`` must be at
    a point before any line end not yet examined (a few bytes of margin suffice)."""
    previous_end = 0 if start == 0 else -1
    for match in _LINE_END.finditer(buffer, start):
        if match.group() == b"\r" and match.end() == len(buffer):
            return None  # a lone CR at the end may be the start of CRLF: wait for more
        if match.start() == previous_end:
            return match.end()
        previous_end = match.end()
    return None


def _parse(raw: bytes) -> SseEvent:
    name = ""
    data: list[str] = []
    for line in _TEXT_LINE_END.split(raw.decode("utf-8", "replace")):
        if not line or line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
    return SseEvent(name, "\n".join(data), raw)
