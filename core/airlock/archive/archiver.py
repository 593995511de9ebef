"""Archive one sealed session: stage, check the lock, upload, then check what landed.

The order is the guarantee: the sink's lock configuration is read before any write; an object
that already exists is never overwritten and its retention is only ever raised; after upload every
object is checked with a HEAD (lock mode, retain-until, checksum) and read back in full, because
an S3 look-alike may accept a wrong checksum or report retention it does not enforce.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from airlock.archive.interface import (
    ArchiveCheckFailed,
    ArchiveSink,
    ArchiveUnlocked,
    LockMode,
    StoredObject,
)
from airlock.archive.layout import (
    EVENTS_NAME,
    LOG_OBJECT,
    MANIFEST_NAME,
    SessionLocation,
    location_for,
    read_manifest,
)
from airlock.archive.s3 import (
    FileDigest,
    b64_of_hex,
    composite_sha256,
    hash_file,
)
from airlock.audit.reader import pack_log
from airlock.events import utc_now

__all__ = [
    "DEFAULT_RETENTION_DAYS",
    "ArchiveOptions",
    "ArchivedObject",
    "Receipt",
    "archive_session",
    "retain_until_for",
    "verify_objects",
]

DEFAULT_RETENTION_DAYS = 365


@dataclass(frozen=True)
class ArchiveOptions:
    """How to archive: lock mode, retention, and whether an unlocked bucket is acceptable."""

    mode: LockMode = LockMode.COMPLIANCE
    retention_days: int = DEFAULT_RETENTION_DAYS
    allow_unlocked: bool = False


@dataclass(frozen=True)
class ArchivedObject:
    """One object of an archived session, as verified."""

    key: str
    sha256: str
    size: int
    action: str  # "uploaded" | "present" | "retention-extended"
    version_id: str | None = None
    lock_mode: str | None = None
    retain_until: str | None = None


@dataclass(frozen=True)
class Receipt:
    """What was archived where, under which lock, and that it was checked."""

    session_id: str
    url: str
    lock_enabled: bool
    allow_unlocked: bool
    mode: str | None
    retain_until: str | None
    verified: bool
    archived_at: str
    objects: tuple[ArchivedObject, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the receipt printed by `airlock archive --json`)."""
        out = asdict(self)
        out["objects"] = [asdict(o) for o in self.objects]
        return out


@dataclass(frozen=True)
class _Staged:
    key: str
    path: Path
    digest: FileDigest


def retain_until_for(manifest: dict[str, Any], days: int, now: datetime | None = None) -> datetime:
    """Retention runs from the seal, so re-running the archive asks for the same date.

    A session sealed long ago (a drained spool) still gets at least one day from now.
    """
    now = now or datetime.now(UTC)
    try:
        sealed = datetime.fromisoformat(str(manifest.get("sealed_at")).replace("Z", "+00:00"))
    except ValueError:
        sealed = now
    until = sealed.replace(microsecond=0) + timedelta(days=days)
    return max(until, now.replace(microsecond=0) + timedelta(days=1))


@contextmanager
def _staged(session_dir: Path, loc: SessionLocation, part_size: int) -> Iterator[list[_Staged]]:
    with tempfile.TemporaryDirectory(prefix="airlock-archive-") as tmp:
        log = Path(tmp) / LOG_OBJECT
        pack_log(session_dir / EVENTS_NAME, log)
        manifest = Path(tmp) / MANIFEST_NAME
        shutil.copyfile(session_dir / MANIFEST_NAME, manifest)
        base = loc.key()
        yield [
            _Staged(base + LOG_OBJECT, log, hash_file(log, part_size)),
            _Staged(base + MANIFEST_NAME, manifest, hash_file(manifest, part_size)),
        ]


def archive_session(
    session_dir: Path,
    sink: ArchiveSink,
    options: ArchiveOptions | None = None,
    *,
    now: datetime | None = None,
) -> Receipt:
    """Upload a sealed session to ``sink`` and verify it. Idempotent: re-running is safe."""
    options = options or ArchiveOptions()
    manifest = read_manifest(session_dir)
    loc = location_for(session_dir, manifest)
    status = sink.lock_status()
    if not status.enabled and not options.allow_unlocked:
        raise ArchiveUnlocked(
            f"{sink.url} has no Object Lock ({status.detail}); refusing to archive"
        )
    mode = options.mode if status.enabled else None
    until = retain_until_for(manifest, options.retention_days, now) if status.enabled else None
    meta = {"airlock-session": loc.session_id, "airlock-unlocked": str(not status.enabled).lower()}
    with _staged(session_dir, loc, sink.part_size) as staged:
        actions = {s.key: _store(sink, s, mode, until, meta) for s in staged}
        stored = verify_objects(sink, staged, mode, until)
    objects = tuple(
        ArchivedObject(
            key=s.key,
            sha256=s.digest.sha256,
            size=s.digest.size,
            action=actions[s.key],
            version_id=obj.version_id,
            lock_mode=obj.lock_mode,
            retain_until=obj.retain_until.isoformat() if obj.retain_until else None,
        )
        for s, obj in zip(staged, stored, strict=True)
    )
    return Receipt(
        session_id=loc.session_id,
        url=f"{sink.url.rstrip('/')}/{loc.key()}",
        lock_enabled=status.enabled,
        allow_unlocked=options.allow_unlocked and not status.enabled,
        mode=mode.value if mode else None,
        retain_until=until.isoformat() if until else None,
        verified=True,
        archived_at=utc_now(),
        objects=objects,
    )


def _store(
    sink: ArchiveSink,
    staged: _Staged,
    mode: LockMode | None,
    until: datetime | None,
    meta: dict[str, str],
) -> str:
    existing = sink.head(staged.key)
    if existing is None:
        stored = sink.put(
            staged.key,
            staged.path,
            sha256=staged.digest.sha256,
            mode=mode,
            retain_until=until,
            metadata=meta,
        )
        if mode is not None and until is not None:
            # Some S3 look-alikes drop the lock headers of a multipart upload: set it explicitly.
            _raise_retention(sink, staged.key, stored, mode, until)
        return "uploaded"
    if sink.read_sha256(staged.key, existing.version_id) != staged.digest.sha256:
        raise ArchiveCheckFailed(
            f"{sink.url}/{staged.key} already exists with different content; it is not replaced",
            hint="the archived copy was changed or another session used this id: investigate",
        )
    if mode is None or until is None:
        return "present"
    return _raise_retention(sink, staged.key, existing, mode, until)


def _raise_retention(
    sink: ArchiveSink, key: str, existing: StoredObject, mode: LockMode, until: datetime
) -> str:
    """Extend the retention when it is earlier than asked; never lower the date or the mode."""
    current_mode = LockMode(existing.lock_mode) if existing.lock_mode in set(LockMode) else None
    stronger = current_mode if current_mode and current_mode.at_least(mode) else mode
    if existing.retain_until is not None and existing.retain_until >= until:
        if current_mode is not None and current_mode.at_least(mode):
            return "present"
        until = existing.retain_until  # upgrade the mode only, keeping the later date
    sink.extend_retention(key, stronger, until)
    return "retention-extended"


def verify_objects(
    sink: ArchiveSink,
    staged: list[_Staged],
    mode: LockMode | None,
    until: datetime | None,
) -> list[StoredObject]:
    """HEAD every object and read it back; raise ArchiveCheckFailed at the first mismatch."""
    return [_verify_one(sink, s, mode, until) for s in staged]


def _verify_one(
    sink: ArchiveSink, staged: _Staged, mode: LockMode | None, until: datetime | None
) -> StoredObject:
    where = f"{sink.url}/{staged.key}"
    obj = sink.head(staged.key)
    if obj is None:
        raise ArchiveCheckFailed(f"{where} is missing after upload")
    if obj.size != staged.digest.size:
        raise ArchiveCheckFailed(f"{where} has {obj.size} bytes, {staged.digest.size} were sent")
    if mode is not None and until is not None:
        _check_lock(where, obj, mode, until)
    _check_checksum(where, obj, staged.digest, required=sink.keeps_checksums)
    if sink.read_sha256(staged.key, obj.version_id) != staged.digest.sha256:
        raise ArchiveCheckFailed(f"{where}: the bytes read back do not hash to what was sent")
    return obj


def _check_lock(where: str, obj: StoredObject, mode: LockMode, until: datetime) -> None:
    if obj.lock_mode not in set(LockMode) or not LockMode(obj.lock_mode).at_least(mode):
        raise ArchiveCheckFailed(f"{where} is locked in mode {obj.lock_mode}, {mode} was asked")
    if obj.retain_until is None or obj.retain_until < until:
        raise ArchiveCheckFailed(
            f"{where} is retained until {obj.retain_until}, earlier than {until.isoformat()}"
        )


def _check_checksum(where: str, obj: StoredObject, digest: FileDigest, *, required: bool) -> None:
    reported = obj.checksum_sha256
    if reported is None:
        if required:
            raise ArchiveCheckFailed(f"{where} has no SHA-256 checksum in the archive")
        return  # the sink keeps no checksum (local); the read-back decides
    accepted = {b64_of_hex(digest.sha256)}
    if len(digest.part_digests) > 1:  # a multipart upload: S3 checksums the part checksums
        composite = composite_sha256(digest.part_digests)
        accepted |= {composite, composite.split("-")[0]}  # moto's HEAD omits the "-N" suffix
    if reported not in accepted:
        raise ArchiveCheckFailed(f"{where}: the archive's SHA-256 checksum does not match")
