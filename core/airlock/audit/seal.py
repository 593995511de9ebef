"""Seal sessions that did not end cleanly, and find them."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

from airlock.audit._format import (
    EVENTS_FILE,
    MANIFEST_FILE,
    SESSION_ID_RE,
    encode_line,
    genesis,
    line_hash,
)
from airlock.audit._manifest import LogState, build_manifest, write_manifest
from airlock.audit._opened import opened_here
from airlock.audit._scan import ChainScan, scan_chain
from airlock.audit.keys import SigningKey
from airlock.audit.pending import PENDING_FILE, read_pending
from airlock.audit.verify import session_paths
from airlock.errors import UsageError, VerificationFailed
from airlock.events import utc_now

__all__ = ["find_unsealed", "seal_session"]


def seal_session(
    path: Path, key: SigningKey, *, reason: str = "session did not end cleanly"
) -> dict[str, Any]:
    """Seal a session that has no manifest (its writer crashed) as ``incomplete``.

    Covers the complete lines only: a partial last line stays in the file, untouched, and
    ``log_bytes`` says where the sealed part ends. The chain is checked first and a broken
    chain is never signed (VerificationFailed). events.jsonl is never rewritten. Raises
    UsageError when the session is already sealed or is not a session.
    """
    session_dir, events = session_paths(path)
    if (session_dir / MANIFEST_FILE).exists():
        raise UsageError(
            f"session {session_dir.name} is already sealed ({session_dir / MANIFEST_FILE})",
            hint=f"check it with `airlock verify {session_dir}`",
        )
    if not events.is_file():
        raise UsageError(
            f"{session_dir} is not a session directory (no {EVENTS_FILE})",
            hint="pass <sessions>/<session-id>",
        )
    session_id = session_dir.name
    if not SESSION_ID_RE.fullmatch(session_id):
        raise UsageError(f"{session_dir} is not named like a session id")
    _fsync_file(events)
    scan = _scan(session_dir, events)
    if _append_pending(session_dir, events, scan):
        scan = _scan(session_dir, events)
    state = LogState(
        session_id=session_id,
        event_count=scan.event_count,
        head=scan.head,
        log_sha256=scan.log_sha256,
        log_bytes=scan.covered,
        started_at=_ts(scan.first_line),
        ended_at=_ts(scan.last_line),
    )
    manifest = build_manifest(
        key=key, state=state, status="incomplete", exit_code=None, reason=reason
    )
    write_manifest(session_dir, manifest)
    (session_dir / PENDING_FILE).unlink(missing_ok=True)
    return manifest


def _scan(session_dir: Path, events: Path) -> ChainScan:
    try:
        return scan_chain(events, genesis(session_dir.name))
    except VerificationFailed as exc:
        raise VerificationFailed(
            f"refusing to seal {session_dir}: {exc.message}", kind=exc.kind, line=exc.line
        ) from exc


def _append_pending(session_dir: Path, events: Path, scan: ChainScan) -> bool:
    """Append the output the dead recorder had read but not logged (see
    :mod:`airlock.audit.pending`), unless the log ends in a partial line."""
    pending = read_pending(session_dir)
    if not pending or scan.covered != events.stat().st_size:
        return False
    seq, head = scan.event_count, scan.head
    lines = []
    for stream, data in sorted(pending.items()):
        try:
            body: dict[str, Any] = {"text": data.decode("utf-8")}
        except UnicodeDecodeError:
            body = {"b64": base64.b64encode(data).decode("ascii")}
        data_ = {"stream": stream, **body, "pending": True}
        line = encode_line(seq, utc_now(), "output", head, data_)
        lines.append(line + b"\n")
        seq, head = seq + 1, line_hash(line)
    fd = os.open(events, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    try:
        os.write(fd, b"".join(lines))
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def find_unsealed(sessions_dir: Path, *, opened_here_only: bool = False) -> list[Path]:
    """Session directories under ``sessions_dir`` with an events.jsonl and no manifest; with
    ``opened_here_only``, only those a recorder of this machine opened (see _opened.py)."""
    try:
        children = sorted(Path(sessions_dir).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [
        child
        for child in children
        if (child / EVENTS_FILE).is_file()
        and not (child / MANIFEST_FILE).exists()
        and (not opened_here_only or opened_here(child))
    ]


def _ts(line: bytes | None) -> str | None:
    if line is None:
        return None
    try:
        ts = json.loads(line).get("ts")
    except ValueError:  # the layout matched but the data is not JSON: leave the time unknown
        return None
    return ts if isinstance(ts, str) else None


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
