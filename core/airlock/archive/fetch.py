"""Fetch an archived session back into a local session directory (for verify and report)."""

from __future__ import annotations

from pathlib import Path

from airlock.archive.interface import ArchiveCheckFailed, ArchiveSink
from airlock.archive.layout import EVENTS_NAME, LOG_OBJECT, MANIFEST_NAME, join_key, parse_url
from airlock.archive.local import LocalSink
from airlock.archive.s3 import S3Sink
from airlock.audit._format import SESSION_ID_RE
from airlock.audit.reader import open_log
from airlock.errors import UsageError

__all__ = ["fetch_session", "make_sink"]


def make_sink(url: str, endpoint_url: str | None = None) -> ArchiveSink:
    """The sink for ``s3://bucket/prefix`` or a local directory."""
    scheme, bucket, prefix = parse_url(url)
    if scheme == "s3":
        return S3Sink(bucket, prefix, endpoint_url=endpoint_url)
    return LocalSink(Path(prefix))


def fetch_session(url: str, dest: Path, endpoint_url: str | None = None) -> Path:
    """Download the archived log and manifest under ``url`` into ``dest/<session-id>/``.

    ``url`` names one archived session directory (``s3://bucket/prefix/.../<session>/`` or a
    local archive path). The log is decompressed, so the result is an ordinary session
    directory that ``verify_session`` reads. Returns that directory.
    """
    scheme, bucket, key = parse_url(url)
    parent, _, session_id = key.rstrip("/").rpartition("/")
    if not session_id or not SESSION_ID_RE.fullmatch(session_id):
        raise UsageError(
            f"{url!r} does not name a session directory", hint="end it with /<session-id>/"
        )
    sink: ArchiveSink
    if scheme == "s3":
        sink = S3Sink(bucket, parent, endpoint_url=endpoint_url)
    else:
        sink = LocalSink(Path(parent or "."))
    target = dest / session_id
    target.mkdir(parents=True, exist_ok=True)
    packed = target / LOG_OBJECT
    sink.download(join_key(session_id, LOG_OBJECT), packed)
    sink.download(join_key(session_id, MANIFEST_NAME), target / MANIFEST_NAME)
    _gunzip(packed, target / EVENTS_NAME)
    return target


MAX_LOG_BYTES = 64 << 30  # 64 GiB: far past any real session


def _gunzip(source: Path, dest: Path) -> None:
    try:
        with open_log(source) as src, dest.open("wb") as out:
            written = 0
            while chunk := src.read(1024 * 1024):
                written += len(chunk)
                if written > MAX_LOG_BYTES:  # a decompression bomb, not a session
                    raise ArchiveCheckFailed(
                        f"the archived {source.name} inflates past {MAX_LOG_BYTES} bytes",
                        hint="the archived object was replaced: compare object versions",
                    )
                out.write(chunk)
    except (OSError, EOFError) as exc:
        raise ArchiveCheckFailed(
            f"the archived {source.name} is not a readable gzip log ({type(exc).__name__})",
            hint="the archived object was damaged or replaced: compare object versions",
        ) from exc
    finally:
        source.unlink(missing_ok=True)
