"""Archive sealed sessions (S3 with Object Lock, or a local directory), fetch them back,
search them, and render them as a report, a Markdown summary or OCSF events.

The sink interface is in ``interface.py``; ``archive_session`` does the upload and the checks;
``fetch_session`` brings an archived session back for ``airlock verify s3://…``.
"""

from __future__ import annotations

from airlock.archive.archiver import ArchiveOptions, Receipt, archive_session
from airlock.archive.fetch import fetch_session, make_sink
from airlock.archive.interface import (
    ArchiveCheckFailed,
    ArchiveError,
    ArchiveSink,
    ArchiveUnlocked,
    ArchiveUnreachable,
    LockMode,
)

__all__ = [
    "ArchiveCheckFailed",
    "ArchiveError",
    "ArchiveOptions",
    "ArchiveSink",
    "ArchiveUnlocked",
    "ArchiveUnreachable",
    "LockMode",
    "Receipt",
    "archive_session",
    "fetch_session",
    "make_sink",
]
