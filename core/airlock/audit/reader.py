"""The one session reader: the file names, the events and the seal of a session, sealed or not.

Every part that reads a session on disk (show, search, report, archive layout, verify, the
broker's witness check) takes the names and the parsing from here, and describes events with
:mod:`airlock.audit.describe`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from airlock.audit._format import EVENTS_FILE, MANIFEST_FILE
from airlock.audit.verify import session_paths
from airlock.errors import UsageError, VerificationFailed

__all__ = ["EVENTS_FILE", "MANIFEST_FILE", "iter_events", "load_manifest"]


def load_manifest(session_dir: Path) -> dict[str, Any] | None:
    """The session's seal as a JSON object, or None when it is missing or unreadable.

    Reading does not verify the signature: :func:`~airlock.audit.verify_session` does.
    """
    try:
        manifest = json.loads((session_dir / MANIFEST_FILE).read_bytes())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def iter_events(path: Path) -> Iterator[dict[str, Any]]:
    """Yield each complete line of a session (its directory or events.jsonl) as a dict.

    Reading does not verify: use :func:`~airlock.audit.verify_session` for that. A partial last
    line (a crashed writer) is skipped; a line that is not a JSON object raises
    VerificationFailed (kind "malformed") with its line number.
    """
    _, events = session_paths(path)
    try:
        handle = events.open("rb")
    except OSError as exc:
        raise UsageError(
            f"cannot read session log {events}: {exc.strerror}",
            hint="pass a session directory: <sessions>/<session-id>",
        ) from exc
    with handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.endswith(b"\n"):
                return
            yield _decode(raw, number)


def _decode(raw: bytes, number: int) -> dict[str, Any]:
    try:
        event = json.loads(raw)
    except ValueError:
        event = None
    if not isinstance(event, dict):
        raise VerificationFailed(
            f"line {number} of the session log is not a JSON object", kind="malformed", line=number
        )
    return event
