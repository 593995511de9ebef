"""Spool: keep a sealed session safe on local disk while the archive is unreachable.

``<spool>/<session-id>/`` holds copies of ``events.jsonl`` and ``manifest.json`` plus
``spool.json`` (where it should go and how). ``airlock archive --drain-spool`` retries every
entry; an entry is removed only after its archived copy was verified. The original session
directory is a separate matter: it is deleted only after verification and only with
``--delete-local``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from airlock.archive.interface import ArchiveError, ArchiveUnreachable
from airlock.archive.layout import EVENTS_NAME, MANIFEST_NAME, read_manifest
from airlock.events import utc_now

__all__ = [
    "SpoolEntry",
    "SpoolRequest",
    "default_spool_dir",
    "pending",
    "spool_session",
    "with_backoff",
]

T = TypeVar("T")
SPOOL_FILE = "spool.json"


def default_spool_dir() -> Path:
    """``./.airlock/spool`` unless --spool / AIRLOCK_SPOOL says otherwise."""
    return Path(".airlock") / "spool"


@dataclass(frozen=True)
class SpoolRequest:
    """Where a spooled session must go, and how (the archive flags at spool time)."""

    to: str
    endpoint_url: str | None
    mode: str
    retention_days: int
    allow_unlocked: bool
    source: str  # the original session directory


@dataclass(frozen=True)
class SpoolEntry:
    """One spooled session."""

    path: Path
    request: SpoolRequest
    spooled_at: str


def spool_session(session_dir: Path, spool_dir: Path, request: SpoolRequest) -> Path:
    """Copy a sealed session into the spool (atomically); return the entry directory."""
    session_id = str(read_manifest(session_dir)["session_id"])
    entry = spool_dir / session_id
    if (entry / SPOOL_FILE).exists():
        return entry
    try:
        spool_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = Path(tempfile.mkdtemp(dir=spool_dir, prefix=".tmp-"))
        for name in (EVENTS_NAME, MANIFEST_NAME):
            shutil.copy2(session_dir / name, tmp / name)
        record = {"request": asdict(request), "spooled_at": utc_now()}
        (tmp / SPOOL_FILE).write_text(json.dumps(record, indent=2))
        tmp.rename(entry)
    except OSError as exc:
        raise ArchiveError(
            f"cannot spool {session_dir} into {spool_dir}: {exc.strerror}",
            hint="check --spool points at a writable directory with free space",
        ) from exc
    return entry


def pending(spool_dir: Path) -> list[SpoolEntry]:
    """Spooled sessions, oldest first. Entries whose spool.json is unreadable are skipped."""
    entries = []
    for path in sorted(spool_dir.glob("*/" + SPOOL_FILE)) if spool_dir.is_dir() else []:
        try:
            record: dict[str, Any] = json.loads(path.read_text())
            request = SpoolRequest(**record["request"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        entries.append(SpoolEntry(path.parent, request, str(record.get("spooled_at", ""))))
    return sorted(entries, key=lambda e: e.spooled_at)


def remove_entry(entry: SpoolEntry) -> None:
    """Drop a spool entry once its archived copy has been verified."""
    shutil.rmtree(entry.path)


def with_backoff(
    func: Callable[[], T],
    retry_for: float,
    *,
    first_delay: float = 0.5,
    max_delay: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[ArchiveUnreachable, float], None] | None = None,
) -> T:
    """Call ``func``; while it raises ArchiveUnreachable, retry with exponential backoff.

    Gives up (re-raising the last error) once ``retry_for`` seconds have passed.
    """
    deadline = time.monotonic() + retry_for
    delay = first_delay
    while True:
        try:
            return func()
        except ArchiveUnreachable as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            wait = min(delay, max_delay, left)
            if on_retry is not None:
                on_retry(exc, wait)
            sleep(wait)
            delay *= 2
