"""Output read but not yet in the log: a small side file the next seal appends.

The recorder holds back the tail of each output stream until the masker has decided it, and a
line it queued may not be written yet. So that a SIGKILL of the recorder loses none of it,
``pending.bin`` in the session directory always holds, per stream, the bytes read and not yet
written to ``events.jsonl``, **already masked** (the held tail is masked as a stream cut short:
see ``Masker.mask_cut``), so no secret is ever on disk. ``seal_session`` appends them as
``output`` events with ``"pending": true`` before it seals a crashed session; a clean end
removes the file.

Each update is one ``pwrite`` of ``<8-digit length>\\n<JSON>``: a process killed between two
updates leaves one of them whole (the kernel finishes a write once it began).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["PENDING_FILE", "PendingSpool", "read_pending"]

PENDING_FILE = "pending.bin"
_HEADER = 9  # "%08d\n"


class PendingSpool:
    """The writer side: replace the pending bytes of every stream at once."""

    def __init__(self, session_dir: Path) -> None:
        self._path = Path(session_dir) / PENDING_FILE
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        self._fd: int | None = os.open(self._path, flags, 0o600)
        self._last = b""

    def update(self, streams: Mapping[str, bytes]) -> None:
        """Record ``streams`` (name → masked bytes) as what is pending now."""
        body = json.dumps(
            {name: base64.b64encode(data).decode() for name, data in streams.items() if data},
            separators=(",", ":"),
        ).encode()
        if body == self._last or self._fd is None:
            return
        self._last = body
        os.pwrite(self._fd, b"%08d\n" % len(body) + body, 0)

    def remove(self) -> None:
        """Nothing is pending any more (the session ended and was sealed)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()


def read_pending(session_dir: Path) -> dict[str, bytes]:
    """The pending bytes per stream left by a recorder that died ({} when none)."""
    try:
        raw = (Path(session_dir) / PENDING_FILE).read_bytes()
        size = int(raw[: _HEADER - 1])
        decoded = json.loads(raw[_HEADER : _HEADER + size])
        return {str(k): base64.b64decode(v) for k, v in decoded.items()}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}
