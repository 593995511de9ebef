"""Local archive: a directory with the same layout as the S3 archive (the embedded default).

A directory cannot enforce retention: files are written once (never overwritten) and made
read-only, and the requested lock is recorded in a sidecar ``.<name>.lock.json``, but anyone
with write access to the directory can still delete them. Use S3 with Object Lock for evidence.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from airlock.archive.interface import (
    ArchiveError,
    ArchiveSink,
    LockMode,
    LockStatus,
    StoredObject,
)

__all__ = ["LocalSink"]

_READ = 1024 * 1024


def _sidecar(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock.json")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_READ):
            digest.update(chunk)
    return digest.hexdigest()


class LocalSink(ArchiveSink):
    """A directory tree; keys are relative paths under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ArchiveError(f"key {key!r} escapes the archive directory {self.root}")
        return path

    def lock_status(self) -> LockStatus:
        return LockStatus(enabled=False, detail="a local directory cannot enforce retention")

    def head(self, key: str) -> StoredObject | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            meta = json.loads(_sidecar(path).read_text())
        except (OSError, ValueError):
            meta = {}
        until = meta.get("retain_until")
        return StoredObject(
            key=key,
            size=path.stat().st_size,
            sha256=meta.get("sha256"),
            lock_mode=meta.get("mode"),
            retain_until=datetime.fromisoformat(until) if until else None,
        )

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
        path = self._path(key)
        if path.exists():
            raise ArchiveError(f"{path} already exists; archived files are never overwritten")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._write_sidecar(path, sha256, mode, retain_until, metadata)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            os.close(fd)
            shutil.copyfile(source, tmp)
            Path(tmp).chmod(0o444)
            Path(tmp).rename(path)
        except OSError as exc:
            raise ArchiveError(f"cannot write {path}: {exc.strerror}") from exc
        stored = self.head(key)
        assert stored is not None
        return stored

    @staticmethod
    def _write_sidecar(
        path: Path,
        sha256: str,
        mode: LockMode | None,
        retain_until: datetime | None,
        metadata: dict[str, str],
    ) -> None:
        side = _sidecar(path)
        meta = {
            "sha256": sha256,
            "mode": mode.value if mode else None,
            "retain_until": retain_until.isoformat() if retain_until else None,
            "metadata": metadata,
        }
        with contextlib.suppress(FileNotFoundError):
            side.chmod(0o644)
        side.write_text(json.dumps(meta, sort_keys=True))
        side.chmod(0o444)

    def extend_retention(self, key: str, mode: LockMode, retain_until: datetime) -> None:
        path = self._path(key)
        current = self.head(key)
        if current is None:
            raise ArchiveError(f"{path} does not exist")
        if current.retain_until is not None and current.retain_until >= retain_until:
            return
        meta = json.loads(_sidecar(path).read_text()) if _sidecar(path).exists() else {}
        self._write_sidecar(
            path, current.sha256 or "", mode, retain_until, meta.get("metadata", {})
        )

    def read_sha256(self, key: str, version_id: str | None = None) -> str:
        return _sha256(self._path(key))

    def download(self, key: str, dest: Path) -> None:
        try:
            shutil.copyfile(self._path(key), dest)
        except OSError as exc:
            raise ArchiveError(f"cannot read {key} from {self.root}: {exc.strerror}") from exc

    def list_keys(self, prefix: str) -> Iterator[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.exists():
            return
        for path in sorted(base.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                yield path.relative_to(self.root).as_posix()
