"""Verify a sealed session: signature, manifest, then every line of the chain.

The first broken point raises :class:`~airlock.errors.VerificationFailed` with ``kind`` one of
:data:`FAILURE_KINDS` and the 1-based ``line`` (None when the break is in the manifest).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from airlock.audit._format import (
    EVENTS_FILE,
    FORMAT,
    HEX64_RE,
    MANIFEST_FILE,
    SESSION_ID_RE,
    canonical_json,
    genesis,
)
from airlock.audit._scan import ChainScan, diagnose_beyond, scan_chain
from airlock.audit.checkpoints import check_witness
from airlock.errors import UsageError, VerificationFailed

__all__ = ["FAILURE_KINDS", "VerifyReport", "verify_session"]

FAILURE_KINDS = (
    "modified",
    "deleted",
    "inserted",
    "reordered",
    "truncated",
    "manifest-edited",
    "untrusted-key",
    "unsealed",
    "malformed",
    "checkpoint-mismatch",
    "unwitnessed",
)
_MAX_MANIFEST = 64 << 20


@dataclass(frozen=True)
class VerifyReport:
    """A session that verified. ``status`` "incomplete" means it did not end cleanly."""

    session_id: str
    status: str
    event_count: int
    head: str
    key_id: str
    checkpoints_checked: int
    warnings: tuple[str, ...]
    reason: str | None = None  # why the session is incomplete, from the seal

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (for ``airlock verify --json``)."""
        return {
            "ok": True,
            "session_id": self.session_id,
            "status": self.status,
            "reason": self.reason,
            "event_count": self.event_count,
            "head": self.head,
            "key_id": self.key_id,
            "checkpoints_checked": self.checkpoints_checked,
            "warnings": list(self.warnings),
        }


def session_paths(path: Path) -> tuple[Path, Path]:
    """(session dir, events.jsonl) for a session dir or its events.jsonl."""
    path = Path(path)
    if path.name == EVENTS_FILE and not path.is_dir():
        return path.parent, path
    return path, path / EVENTS_FILE


def verify_session(
    path: Path,
    trusted: Mapping[str, Ed25519PublicKey],
    *,
    witnesses: Mapping[str, Ed25519PublicKey] | None = None,
) -> VerifyReport:
    """Verify the session at ``path`` (its directory or its events.jsonl) against ``trusted``.

    Checks, in order: the seal exists and is signed by a trusted key, the manifest is well
    formed, every line chains (seq and prev), and the log matches the seal's count, head, size
    and SHA-256. Raises VerificationFailed at the first broken point, UsageError when ``path``
    is not a session at all.
    """
    session_dir, events = session_paths(path)
    manifest = _load_manifest(session_dir, events)
    key_id = _check_signature(manifest, trusted)
    _check_manifest_fields(manifest)
    if not events.is_file():
        raise VerificationFailed(
            f"line 1: {events} is missing but {MANIFEST_FILE} seals "
            f"{manifest['event_count']} events",
            kind="truncated",
            line=1,
        )
    checkpoints = _checkpoint_wants(manifest)
    # Witness signatures are checked against the witnesses' keys only: a session's own key (which
    # the agent may have read) must never vouch for a checkpoint.
    warnings = _witness_warnings(manifest, witnesses if witnesses is not None else {})
    scan = scan_chain(
        events,
        manifest["genesis"],
        limit=manifest["log_bytes"],
        want=frozenset(checkpoints),
        head=manifest["head"],
    )
    _check_end(events, manifest, scan)
    _check_checkpoints(checkpoints, scan)
    warnings += _trailing_warnings(events, manifest)
    if session_dir.name != manifest["session_id"]:
        warnings.append(
            f"directory name {session_dir.name!r} differs from session id "
            f"{manifest['session_id']!r}"
        )
    return VerifyReport(
        session_id=manifest["session_id"],
        status=manifest["status"],
        event_count=manifest["event_count"],
        head=manifest["head"],
        key_id=key_id,
        checkpoints_checked=len(checkpoints),
        warnings=tuple(warnings),
        reason=manifest["reason"],
    )


def _manifest_error(message: str, kind: str = "malformed") -> VerificationFailed:
    return VerificationFailed(
        f"{MANIFEST_FILE}: {message}",
        kind=kind,
        line=None,
        hint="the seal was changed or damaged; compare it with the archived copy",
    )


def _load_manifest(session_dir: Path, events: Path) -> dict[str, Any]:
    target = session_dir / MANIFEST_FILE
    if not target.exists():
        if events.is_file():
            raise VerificationFailed(
                f"session {session_dir} is not sealed (no {MANIFEST_FILE})",
                kind="unsealed",
                hint=f"if it crashed, seal it as incomplete with `airlock seal {session_dir}`",
            )
        raise UsageError(
            f"{session_dir} is not a session directory (no {EVENTS_FILE}, no {MANIFEST_FILE})",
            hint="pass a session directory: <sessions>/<session-id>",
        )
    try:
        with target.open("rb") as handle:
            raw = handle.read(_MAX_MANIFEST + 1)
        if len(raw) > _MAX_MANIFEST:
            raise _manifest_error("too large")
        manifest = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise _manifest_error("is not readable JSON") from exc
    if not isinstance(manifest, dict):
        raise _manifest_error("is not a JSON object")
    return manifest


def _signatures(manifest: dict[str, Any]) -> list[tuple[str, bytes]]:
    sigs = manifest.get("signatures")
    if not isinstance(sigs, list) or not sigs:
        raise _manifest_error("has no signatures", kind="manifest-edited")
    found = []
    for entry in sigs:
        if not isinstance(entry, dict) or entry.get("alg") != "Ed25519":
            continue
        key_id, sig = entry.get("key_id"), entry.get("sig")
        if not isinstance(key_id, str) or not isinstance(sig, str):
            continue
        try:
            found.append((key_id, base64.b64decode(sig, validate=True)))
        except (binascii.Error, ValueError):
            continue
    return found


def _check_signature(manifest: dict[str, Any], trusted: Mapping[str, Ed25519PublicKey]) -> str:
    """The key id of the first trusted signature that verifies."""
    sigs = _signatures(manifest)
    body = canonical_json({k: v for k, v in manifest.items() if k != "signatures"})
    candidates = [(kid, sig) for kid, sig in sigs if kid in trusted]
    for key_id, sig in candidates:
        try:
            trusted[key_id].verify(sig, body)
        except InvalidSignature:
            continue
        return key_id
    if candidates:
        raise _manifest_error(
            "the signature does not match its content: the seal was edited after signing",
            kind="manifest-edited",
        )
    signers = ", ".join(kid for kid, _ in sigs) or "no Ed25519 key"
    raise VerificationFailed(
        f"{MANIFEST_FILE} is signed by {signers}, which is not a trusted key",
        kind="untrusted-key",
        hint="if you trust the signer, pass its public key with --key-file (AIRLOCK_TRUST_KEYS)",
    )


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_manifest_fields(m: dict[str, Any]) -> None:
    if m.get("format") != FORMAT:
        raise _manifest_error(f"format is {m.get('format')!r}, this Airlock reads {FORMAT!r}")
    sid = m.get("session_id")
    if not isinstance(sid, str) or not SESSION_ID_RE.fullmatch(sid):
        raise _manifest_error("session_id is missing or invalid")
    if m.get("status") not in ("complete", "incomplete"):
        raise _manifest_error("status must be 'complete' or 'incomplete'")
    for name in ("event_count", "log_bytes"):
        if not _is_count(m.get(name)):
            raise _manifest_error(f"{name} must be a non-negative integer")
    for name in ("head", "genesis", "log_sha256"):
        if not isinstance(m.get(name), str) or not HEX64_RE.fullmatch(m[name]):
            raise _manifest_error(f"{name} must be 64 lowercase hex digits")
    if m["genesis"] != genesis(sid):
        raise _manifest_error("genesis does not belong to session_id")
    last = m["event_count"] - 1 if m["event_count"] else None
    if m.get("last_seq") != last:
        raise _manifest_error("last_seq does not agree with event_count")
    if not isinstance(m.setdefault("checkpoints", []), list):
        raise _manifest_error("checkpoints must be a list")
    if m["status"] == "incomplete" and not isinstance(m.get("reason"), str):
        m["reason"] = "not given"
    m.setdefault("reason", None)


def _checkpoint_wants(manifest: dict[str, Any]) -> dict[int, str]:
    """seq → head hash for each checkpoint that names a line of this log."""
    wants: dict[int, str] = {}
    for entry in manifest["checkpoints"]:
        if not isinstance(entry, dict):
            raise _manifest_error("a checkpoint is not an object")
        seq, head = entry.get("seq"), entry.get("head")
        if not isinstance(seq, int) or not _is_count(seq) or not isinstance(head, str):
            raise _manifest_error("a checkpoint needs an integer seq and a head")
        if seq >= manifest["event_count"]:
            raise _manifest_error(f"checkpoint seq {seq} is past the end of the log")
        wants[seq] = head
    return wants


def _check_end(events: Path, m: dict[str, Any], scan: ChainScan) -> None:
    """After a clean chain: does the log end where the seal says?"""
    count, size = m["event_count"], events.stat().st_size
    n = scan.event_count
    if n < count:
        if size < m["log_bytes"]:
            raise VerificationFailed(
                f"line {n + 1}: the log ends after {n} complete line(s) ({size} bytes) but the "
                f"seal covers {count} events ({m['log_bytes']} bytes)",
                kind="truncated",
                line=n + 1,
            )
        raise diagnose_beyond(events, scan, m["genesis"], m["head"])
    if n > count:
        raise VerificationFailed(
            f"line {count + 1}: {n - count} line(s) beyond the sealed {count} events",
            kind="inserted",
            line=count + 1,
        )
    if scan.head != m["head"] or scan.leftover:
        raise VerificationFailed(
            f"line {n}: was modified: its hash is not the sealed head", kind="modified", line=n
        )
    if scan.log_sha256 != m["log_sha256"]:
        raise _manifest_error("log_sha256 does not match the log", kind="modified")


def _witness_warnings(
    manifest: dict[str, Any], trusted: Mapping[str, Ed25519PublicKey]
) -> list[str]:
    found = (check_witness(e, manifest["session_id"], trusted) for e in manifest["checkpoints"])
    return [warning for warning in found if warning is not None]


def _check_checkpoints(wants: dict[int, str], scan: ChainScan) -> None:
    for seq, head in sorted(wants.items()):
        if scan.checkpoint_heads.get(seq) != head:
            raise VerificationFailed(
                f"line {seq + 1}: does not match the witnessed checkpoint at seq {seq}",
                kind="checkpoint-mismatch",
                line=seq + 1,
            )


def _trailing_warnings(events: Path, m: dict[str, Any]) -> list[str]:
    """Bytes after the sealed part: a partial line is tolerated only in an incomplete session."""
    extra = events.stat().st_size - m["log_bytes"]
    if extra <= 0:
        return []
    with events.open("rb") as handle:
        handle.seek(m["log_bytes"])
        tail = handle.read(1 << 20)
    if b"\n" in tail or m["status"] == "complete":
        line = m["event_count"] + 1
        raise VerificationFailed(
            f"line {line}: {extra} byte(s) were appended after the sealed end of the log",
            kind="inserted",
            line=line,
        )
    return [f"{extra} byte(s) of a partial last line are not covered by the seal"]
