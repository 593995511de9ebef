"""Build, sign and write ``manifest.json``, the seal of a session."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airlock.audit._format import FORMAT, MANIFEST_FILE, canonical_json, genesis
from airlock.audit.keys import SigningKey
from airlock.errors import RecordingError, UsageError
from airlock.events import utc_now

__all__ = ["LogState", "build_manifest", "write_manifest"]

STATUSES = ("complete", "incomplete")


@dataclass(frozen=True)
class LogState:
    """What a seal covers: the first ``log_bytes`` bytes of events.jsonl, all complete lines."""

    session_id: str
    event_count: int
    head: str
    log_sha256: str
    log_bytes: int
    started_at: str | None
    ended_at: str | None


def build_manifest(
    state: LogState,
    key: SigningKey,
    *,
    status: str,
    exit_code: int | None,
    reason: str | None,
    checkpoints: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The manifest for ``state``, signed by ``key`` over its canonical JSON."""
    if status not in STATUSES:
        raise UsageError(f"seal status must be one of {', '.join(STATUSES)}, not {status!r}")
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "session_id": state.session_id,
        "status": status,
        "event_count": state.event_count,
        "last_seq": state.event_count - 1 if state.event_count else None,
        "head": state.head,
        "genesis": genesis(state.session_id),
        "log_sha256": state.log_sha256,
        "log_bytes": state.log_bytes,
        "sealed_at": utc_now(),
        "started_at": state.started_at,
        "ended_at": state.ended_at,
        "exit_code": exit_code,
        "reason": reason,
        "checkpoints": [dict(c) for c in checkpoints],
    }
    signature = key.sign(canonical_json(manifest))
    manifest["signatures"] = [
        {"alg": "Ed25519", "key_id": key.key_id, "sig": base64.b64encode(signature).decode()}
    ]
    return manifest


def write_manifest(session_dir: Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest.json`` atomically (0600) and never over an existing one.

    The file is written under a temporary name, fsynced, then hard-linked into place: link(2)
    fails when the target exists, so two sealers racing cannot replace each other's seal.
    """
    target = session_dir / MANIFEST_FILE
    tmp = session_dir / f".{MANIFEST_FILE}.{secrets.token_hex(4)}.tmp"
    body = (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    try:
        _write_new_file(tmp, body)
        try:
            os.link(tmp, target)
        except FileExistsError as exc:
            raise UsageError(
                f"session {manifest['session_id']} is already sealed ({target} exists)",
                hint=f"check it with `airlock verify {session_dir}`",
            ) from exc
        _fsync_dir(session_dir)
    except OSError as exc:
        raise RecordingError(f"could not write the seal {target}: {exc.strerror}") from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return target


def _write_new_file(path: Path, body: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(body)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
