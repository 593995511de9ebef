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
    """Feed bytes with :meth:`feed`; get the events they complete. One pass over the bytes: a
    chunk holding many events costs time in proportion to its size."""

    def __init__(self, max_event: int = _MAX_EVENT) -> None:
        self._buffer = bytearray()
        self._max = max_event
        self._pos = 0  # where scanning resumes
        self._prev = 0  # end of the last line end seen (0: the buffer starts a line), or -1

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """The events that ``chunk`` completes (possibly none)."""
        buf = self._buffer
        buf += chunk
        events, start, prev, pos = [], 0, self._prev, len(buf)
        for match in _LINE_END.finditer(buf, self._pos):
            if (
                match.end() == len(buf)
                and buf[match.start()] == 0x0D
                and match.end() - match.start() == 1
            ):
                pos = match.start()  # a lone CR at the end may be the start of CRLF
                break
            if match.start() == prev:  # a blank line: the event ends here
                events.append(_parse(bytes(buf[start : match.end()])))
                start = match.end()
            prev = match.end()
        del buf[:start]
        self._pos = pos - start
        self._prev = prev - start if prev >= start else -1
        if len(buf) > self._max:
            raise SseError(f"an event of more than {self._max} bytes")
        return events

    def close(self) -> list[SseEvent]:
        """The unterminated last event, if the stream ended mid-event."""
        raw = bytes(self._buffer)
        self._buffer.clear()
        self._pos, self._prev = 0, 0
        return [_parse(raw)] if raw.strip() else []


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
