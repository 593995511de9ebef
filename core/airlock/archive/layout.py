"""Where a session goes in the archive.

``<prefix>/<platform>/<owner>/<repo>/<yyyy>/<mm>/<dd>/<run>/<session>/`` holding
``events.jsonl.gz`` (the log, gzip: readable by Athena, DuckDB and zcat without extra software)
and ``manifest.json`` (the seal, with its signatures, byte for byte as written locally).
Identity comes from the ``session.start`` event; local sessions go under ``local/_local/_local``
with run ``_``. The date is the session's start (UTC).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airlock.audit.reader import (
    ARCHIVED_EVENTS_FILE,
    EVENTS_FILE,
    MANIFEST_FILE,
    first_event,
    require_manifest,
)
from airlock.errors import UsageError

__all__ = [
    "EVENTS_NAME",
    "LOG_OBJECT",
    "MANIFEST_NAME",
    "SessionLocation",
    "join_key",
    "location_for",
    "parse_url",
    "read_manifest",
]

EVENTS_NAME = EVENTS_FILE  # the names are the audit reader's
LOG_OBJECT = ARCHIVED_EVENTS_FILE
MANIFEST_NAME = MANIFEST_FILE

# One path segment of a key: no "/", no "..", nothing a shell or a browser would reinterpret.
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+@-]")


def _segment(value: str | None, fallback: str) -> str:
    text = _UNSAFE.sub("_", value or "") or fallback
    return fallback if text in {".", ".."} else text


@dataclass(frozen=True)
class SessionLocation:
    """The layout fields of one session."""

    platform: str
    owner: str
    repo: str
    year: str
    month: str
    day: str
    run: str
    session_id: str

    def key(self, prefix: str = "") -> str:
        """The session's directory key under ``prefix``, with a trailing slash."""
        parts = [self.platform, self.owner, self.repo, self.year, self.month, self.day]
        return join_key(prefix, *parts, self.run, self.session_id) + "/"


def join_key(*parts: str) -> str:
    """Join key segments with single slashes, dropping empty ones."""
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


def read_manifest(session_dir: Path, *, required: bool = True) -> dict[str, Any]:
    """The seal of a session; a session without one must be sealed before it is archived.

    With ``required=False`` an unsealed session gives a stub ``{"session_id": <dir name>}``.
    """
    if not required and not (session_dir / MANIFEST_NAME).exists():
        return {"session_id": session_dir.name, "status": "unsealed"}
    return require_manifest(session_dir)


def _owner_repo(identity: dict[str, Any]) -> tuple[str, str]:
    repository = str(identity.get("repository") or "")
    owner, _, repo = repository.partition("/")
    if not repo:
        return "_local", "_local"
    return owner, repo


def location_for(session_dir: Path, manifest: dict[str, Any] | None = None) -> SessionLocation:
    """Compute the layout fields from the session's first event and its manifest."""
    manifest = manifest if manifest is not None else read_manifest(session_dir)
    first = first_event(session_dir)
    data = first.get("data") if first.get("type") == "session.start" else None
    identity = data.get("identity", {}) if isinstance(data, dict) else {}
    identity = identity if isinstance(identity, dict) else {}
    platform = str(identity.get("platform") or "local")
    owner, repo = _owner_repo(identity) if platform != "local" else ("_local", "_local")
    started = str(manifest.get("started_at") or first.get("ts") or "1970-01-01")
    year, month, day = [*started[:10].split("-"), "01", "01"][:3]
    run = str(identity.get("run_id") or "_")
    return SessionLocation(
        platform=_segment(platform, "local"),
        owner=_segment(owner, "_local"),
        repo=_segment(repo, "_local"),
        year=_segment(year, "1970"),
        month=_segment(month, "01"),
        day=_segment(day, "01"),
        run=_segment(run, "_"),
        session_id=_segment(str(manifest["session_id"]), "_"),
    )


def parse_url(url: str) -> tuple[str, str, str]:
    """Split ``s3://bucket/prefix`` into (scheme, bucket, prefix).

    Local paths (or ``file://`` URLs) give ``("file", "", path)``.
    """
    if url.startswith("s3://"):
        bucket, _, prefix = url[len("s3://") :].partition("/")
        if not bucket:
            raise UsageError(f"no bucket in {url!r}", hint="write s3://BUCKET/PREFIX")
        return "s3", bucket, prefix.strip("/")
    if url.startswith("file://"):
        return "file", "", url[len("file://") :]
    if "://" in url:
        raise UsageError(
            f"unsupported archive URL {url!r}", hint="use s3://BUCKET/PREFIX or a path"
        )
    return "file", "", url
