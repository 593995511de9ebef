"""The archive plug point: one abstract sink, one error family, one module per implementation.

    AirlockError
     ├── InfrastructureUnavailable
     │    └── ArchiveError              the archive refused or failed          → 85
     │         ├── ArchiveUnreachable   S3 cannot be reached: spool and retry  → 85
     │         └── ArchiveUnlocked      bucket without Object Lock, refused    → 85
     └── VerificationFailed
          └── ArchiveCheckFailed        what landed is not what we sent        → 84

Sinks store immutable objects under keys of the layout (``layout.py``). They do not know about
sessions: ``archiver.py`` turns a sealed session into objects and checks what landed.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from airlock.errors import InfrastructureUnavailable, VerificationFailed

__all__ = [
    "ArchiveCheckFailed",
    "ArchiveError",
    "ArchiveSink",
    "ArchiveUnlocked",
    "ArchiveUnreachable",
    "LockMode",
    "LockStatus",
    "StoredObject",
]


class ArchiveError(InfrastructureUnavailable):
    """The archive could not store or read what was asked."""

    default_hint = "check --to, --endpoint-url and the credentials in the boto3 chain"


class ArchiveUnreachable(ArchiveError):
    """The archive endpoint did not answer; the session is spooled and retried."""

    default_hint = (
        "check that S3 (or --endpoint-url) is reachable; spooled sessions are retried by "
        "`airlock archive --drain-spool`"
    )


class ArchiveUnlocked(ArchiveError):
    """The bucket has no Object Lock configuration; refused unless explicitly allowed."""

    default_hint = (
        "create the bucket with Object Lock enabled, or pass --allow-unlocked "
        "(recorded in the receipt and on every object)"
    )


class ArchiveCheckFailed(VerificationFailed):
    """What the archive holds does not match what was uploaded (checksum, lock, retention)."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, kind="archive-mismatch", hint=hint)


class LockMode(enum.StrEnum):
    """S3 Object Lock retention modes. COMPLIANCE cannot be shortened or removed by anyone."""

    COMPLIANCE = "COMPLIANCE"
    GOVERNANCE = "GOVERNANCE"

    def at_least(self, other: LockMode) -> bool:
        """True when this mode protects at least as strongly as ``other``."""
        return self is LockMode.COMPLIANCE or other is LockMode.GOVERNANCE


@dataclass(frozen=True)
class LockStatus:
    """The sink's lock configuration as read before any write."""

    enabled: bool
    default_mode: str | None = None
    default_days: int | None = None
    detail: str = ""


@dataclass(frozen=True)
class StoredObject:
    """One object as the archive reports it (HeadObject, or a local sidecar)."""

    key: str
    size: int
    sha256: str | None  # hex of the whole object, when the archive reports it
    lock_mode: str | None
    retain_until: datetime | None
    version_id: str | None = None
    checksum_sha256: str | None = None  # the archive's own checksum field, as reported


class ArchiveSink(abc.ABC):
    """Where archived sessions go. Implementations: ``s3.S3Sink``, ``local.LocalSink``."""

    url: str
    #: True when ``head`` always reports the archive's own SHA-256 checksum (S3 does).
    keeps_checksums: bool = False
    #: Part size of multipart uploads; S3 checksums of multipart objects are per part.
    part_size: int = 16 * 1024 * 1024

    @abc.abstractmethod
    def lock_status(self) -> LockStatus:
        """Read the lock configuration. Called before any write."""

    @abc.abstractmethod
    def head(self, key: str) -> StoredObject | None:
        """Describe the current version of ``key``, or None when there is none."""

    @abc.abstractmethod
    def put(
        self,
        key: str,
        source: Path,
        *,
        sha256: str,
        mode: LockMode | None,
        retain_until: datetime | None,
        metadata: dict[str, str],
    ) -> StoredObject:
        """Store ``source`` at ``key`` with the lock and checksum given."""

    @abc.abstractmethod
    def extend_retention(self, key: str, mode: LockMode, retain_until: datetime) -> None:
        """Raise the retain-until date of ``key``; callers never ask for an earlier date."""

    @abc.abstractmethod
    def read_sha256(self, key: str, version_id: str | None = None) -> str:
        """Read the object back and return the SHA-256 hex of its bytes."""

    @abc.abstractmethod
    def download(self, key: str, dest: Path) -> None:
        """Copy the object's bytes into the file ``dest``."""

    @abc.abstractmethod
    def list_keys(self, prefix: str) -> Iterator[str]:
        """Every key under ``prefix`` (relative to the sink's own prefix)."""
