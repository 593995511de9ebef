"""The ``file`` backend: requests and decisions are JSON files in a directory.

For local runs, scripted approvals and tests. Layout::

    <dir>/requests/<request-id>.json    written by the waiting side: the operation and its hash
    <dir>/decisions/<request-id>.json   written by the decider (``airlock gate decide ID``)

A decision file names the operation hash it approves; one for another hash is refused (denied).
The first decision written wins: files are created atomically and never replaced. Anyone who can
write to the directory can decide, so give it the permissions of the people who may approve.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from airlock.audit.keys import SigningKey
from airlock.gate.interface import (
    Answer,
    ApprovalBackend,
    ApprovalRequest,
    GateError,
    Operation,
    Record,
    format_time,
    valid_request_id,
)

__all__ = ["FileBackend", "decide", "pending"]

_MAX_FILE = 64 * 1024
_HINT = "check --dir: it must exist and be writable by the waiting step and the decider"


class FileBackend(ApprovalBackend):
    """Requests and decisions as files under ``directory`` (created if missing, mode 0700)."""

    name = "file"

    def __init__(self, directory: Path, *, key: SigningKey, record: Record | None = None) -> None:
        super().__init__(key=key, record=record)
        self.directory = Path(directory)
        for sub in ("requests", "decisions"):
            try:
                (self.directory / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise GateError(
                    f"could not create {self.directory / sub}: {exc.strerror}", hint=_HINT
                ) from exc

    def _submit(self, req: ApprovalRequest) -> None:
        data = {
            "request_id": req.request_id,
            "operation": req.operation.to_dict(),
            "operation_hash": req.operation_hash,
            "requested_at": format_time(req.requested_at),
            "expires_at": format_time(req.expires_at) if req.expires_at else None,
        }
        _write_once(self.directory / "requests" / f"{req.request_id}.json", data)

    def _fetch(self, req: ApprovalRequest) -> Answer | None:
        path = self.directory / "decisions" / f"{req.request_id}.json"
        try:
            raw = _read_json(path)
        except FileNotFoundError:
            return None
        return _answer_from(raw, req)


def _answer_from(raw: Any, req: ApprovalRequest) -> Answer:
    if not (
        isinstance(raw, dict)
        and isinstance(raw.get("approved"), bool)
        and isinstance(raw.get("by"), str)
        and isinstance(raw.get("operation_hash"), str)
    ):
        return Answer(False, "airlock", req.operation_hash, "refused: malformed decision file")
    reason = raw.get("reason") if isinstance(raw.get("reason"), str) else ""
    return Answer(raw["approved"], raw["by"][:200], raw["operation_hash"], str(reason)[:500])


def decide(
    directory: Path, request_id: str, *, approved: bool, by: str, reason: str = ""
) -> dict[str, Any]:
    """Write the decision on ``request_id`` (bound to its operation hash); return what was written.

    Raises GateError when the request does not exist or was already decided.
    """
    request = _load_request(Path(directory), request_id)
    data = {
        "request_id": request_id,
        "operation_hash": request["operation_hash"],
        "approved": approved,
        "by": by,
        "reason": reason,
        "at": format_time(time.time()),
    }
    target = Path(directory) / "decisions" / f"{request_id}.json"
    if not _write_once(target, data):
        raise GateError(
            f"request {request_id} was already decided",
            hint="the first decision stands; ask again for a new request",
        )
    return data


def pending(directory: Path) -> Iterator[dict[str, Any]]:
    """Request files (``request_id``, ``operation``, ``operation_hash``, …) under ``directory``
    that have no decision yet, oldest first."""
    requests = Path(directory) / "requests"
    if not requests.is_dir():
        return
    found = [p for p in requests.glob("*.json") if valid_request_id(p.stem)]
    for path in sorted(found, key=_mtime):
        if (Path(directory) / "decisions" / path.name).exists():
            continue
        with contextlib.suppress(GateError, FileNotFoundError):
            yield _load_request(Path(directory), path.stem)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _load_request(directory: Path, request_id: str) -> dict[str, Any]:
    if not valid_request_id(request_id):
        raise GateError(
            "an approval request id is 32 lowercase hex characters",
            hint="copy the id from the approval.requested event or `airlock gate list`",
        )
    try:
        data = _read_json(directory / "requests" / f"{request_id}.json")
    except FileNotFoundError as exc:
        raise GateError(f"no approval request {request_id} in {directory}", hint=_HINT) from exc
    if not isinstance(data, dict) or not isinstance(data.get("operation"), dict):
        raise GateError(f"the request file for {request_id} is malformed")
    expected = Operation.from_dict(data["operation"]).operation_hash()
    if data.get("operation_hash") != expected:
        raise GateError(f"the request file for {request_id} does not match its operation hash")
    return data


def _read_json(path: Path) -> Any:
    try:
        with path.open("rb") as handle:
            raw = handle.read(_MAX_FILE + 1)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise GateError(f"could not read {path}: {exc.strerror}", hint=_HINT) from exc
    if len(raw) > _MAX_FILE:
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None


def _write_once(path: Path, data: dict[str, Any]) -> bool:
    """Create ``path`` atomically with ``data``; False when it already exists."""
    payload = json.dumps(data, indent=2, sort_keys=True).encode() + b"\n"
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            os.write(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails if a decision is already there: first one wins
        except FileExistsError:
            return False
        finally:
            Path(tmp).unlink()
    except OSError as exc:
        raise GateError(f"could not write {path}: {exc.strerror}", hint=_HINT) from exc
    return True
