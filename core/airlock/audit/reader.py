"""The one session reader: the file names, the events and the seal of a session, sealed or not.

Every part that reads a session on disk (show, search, report, archive layout, verify, the
broker's witness check) takes the names and the parsing from here, and describes events with
:mod:`airlock.audit.describe`. The archived form of the log (``events.jsonl.gz``) is read and
written here too: :func:`open_log` and :func:`first_event` take either form, :func:`pack_log`
writes the archived one. tests/audit/test_one_reader.py keeps the file names and the parsing out
of every other layer.
"""

from __future__ import annotations

import gzip
import hashlib
import heapq
import io
import json
import shutil
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from airlock.audit._format import EVENTS_FILE, MANIFEST_FILE
from airlock.audit.verify import session_paths
from airlock.errors import UsageError, VerificationFailed

__all__ = [
    "ARCHIVED_EVENTS_FILE",
    "EVENTS_FILE",
    "MANIFEST_FILE",
    "event_time",
    "find_logs",
    "first_event",
    "in_time_order",
    "iter_events",
    "line_hashes",
    "load_manifest",
    "open_log",
    "pack_log",
    "require_manifest",
]

ARCHIVED_EVENTS_FILE = f"{EVENTS_FILE}.gz"  # the log as archived: gzip, byte-identical inside
_TRACED = ("process.exec", "process.exit")
REORDER_SECONDS = 2.0  # how far back a process event may move in the timeline
V = TypeVar("V")


def event_time(event: dict[str, Any]) -> datetime | None:
    """When the event happened: for a process exec or exit, strace's own clock (``data.at``,
    its ``-ttt`` time; the line is written when the trace batch is read, a little later);
    otherwise the recorder's ``ts``. None when neither can be read."""
    data = event.get("data")
    at = data.get("at") if isinstance(data, dict) else None
    if event.get("type") in _TRACED and isinstance(at, int | float) and not isinstance(at, bool):
        try:
            return datetime.fromtimestamp(at, UTC)
        except (ValueError, OverflowError, OSError):
            pass
    try:
        return datetime.fromisoformat(str(event.get("ts")).replace("Z", "+00:00"))
    except ValueError:
        return None


def in_time_order(
    events: Iterable[dict[str, Any]], view: Callable[[dict[str, Any]], V]
) -> Iterator[tuple[datetime | None, dict[str, Any], V]]:
    """(when it happened, event, ``view(event)``) in the order things happened, stable in log
    order: what ``airlock show`` and the report list.

    A process event is written when its trace batch is read, a little after the exec (and
    after output the process already printed): it moves back to its own time
    (:func:`event_time`), up to ``REORDER_SECONDS`` of log time. ``view`` is called in log order
    (a decision refers to its request)."""
    held: list[tuple[float, int, datetime | None, dict[str, Any], V]] = []
    last = float("-inf")
    for seq, event in enumerate(events):
        when = event_time(event)
        key = when.timestamp() if when is not None else last
        last = max(last, key)
        heapq.heappush(held, (key, seq, when, event, view(event)))
        while held and held[0][0] <= last - REORDER_SECONDS:
            yield heapq.heappop(held)[2:]
    while held:
        yield heapq.heappop(held)[2:]


def require_manifest(session_dir: Path) -> dict[str, Any]:
    """The session's seal; a UsageError that says what to do when it is missing or not a seal."""
    path = session_dir / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise UsageError(
            f"{session_dir} is not sealed (no {MANIFEST_FILE})",
            hint=f"run `airlock seal {session_dir}` first",
        ) from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {path}: {type(exc).__name__}") from exc
    if not isinstance(manifest, dict) or "session_id" not in manifest:
        raise UsageError(f"{path} is not an Airlock manifest")
    return manifest


def open_log(path: Path) -> io.BufferedIOBase:
    """Open a session log for reading: a session directory, its events.jsonl, or an archived
    events.jsonl.gz (decompressed as it is read)."""
    log = _log_path(path)
    return gzip.open(log, "rb") if log.name == ARCHIVED_EVENTS_FILE else log.open("rb")


def line_hashes(path: Path) -> list[str]:
    """SHA-256 of each complete line of a log (either form), as the broker's checkpoints hash
    them; a partial last line (a log cut while being written) is not part of the log."""
    hashes = []
    with open_log(path) as log:
        for line in log:
            if not line.endswith(b"\n"):
                break
            hashes.append(hashlib.sha256(line[:-1]).hexdigest())
    return hashes


def _log_path(path: Path) -> Path:
    return path if path.name == ARCHIVED_EVENTS_FILE else session_paths(path)[1]


def first_event(path: Path) -> dict[str, Any]:
    """The first line of a log (either form) as a dict; ``{}`` when it is missing or unreadable.

    This is the session's ``session.start`` when the log is whole: the identity lives there.
    """
    try:
        with open_log(path) as handle:
            event = json.loads(handle.readline())
    except (OSError, ValueError, EOFError):
        return {}
    return event if isinstance(event, dict) else {}


def find_logs(root: Path, *, archived: bool = True) -> list[Path]:
    """The logs under ``root``: a session directory gives its own; a directory of sessions gives
    each ``<id>/events.jsonl``; with ``archived``, every ``events.jsonl.gz`` below as well."""
    if (root / EVENTS_FILE).is_file():
        return [root / EVENTS_FILE]
    found = sorted(root.glob(f"*/{EVENTS_FILE}"))
    return found + sorted(root.rglob(ARCHIVED_EVENTS_FILE)) if archived else found


def pack_log(source: Path, dest: Path) -> None:
    """Write the archived form of a log: gzip with no name and mtime 0, so one log always packs
    to the same bytes (archiving again is idempotent)."""
    with (
        source.open("rb") as src,
        dest.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz,
    ):
        shutil.copyfileobj(src, gz, 1024 * 1024)


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
    """Yield each complete line of a session (its directory, events.jsonl or events.jsonl.gz).

    Reading does not verify: use :func:`~airlock.audit.verify_session` for that. A partial last
    line (a crashed writer) is skipped; a line that is not a JSON object raises
    VerificationFailed (kind "malformed") with its line number.
    """
    events = _log_path(path)
    try:
        handle = open_log(events)
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
