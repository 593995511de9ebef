"""`airlock archive PATH --to s3://bucket/prefix`: upload under Object Lock, then verify."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from airlock._commands._common import add_flag
from airlock._commands._progress import ItemProgress
from airlock.archive.archiver import (
    DEFAULT_RETENTION_DAYS,
    ArchiveOptions,
    Receipt,
    archive_session,
)
from airlock.archive.fetch import make_sink
from airlock.archive.interface import ArchiveError, ArchiveSink, ArchiveUnreachable, LockMode
from airlock.archive.layout import EVENTS_NAME, MANIFEST_NAME, parse_url
from airlock.archive.spool import (
    SpoolEntry,
    SpoolRequest,
    default_spool_dir,
    pending,
    remove_entry,
    spool_session,
    with_backoff,
)
from airlock.audit.reader import find_logs
from airlock.errors import UsageError

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add `airlock archive`."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "archive",
        help="upload sealed sessions under S3 Object Lock (or to a directory) and verify them",
        description=(
            "Upload sealed sessions in the archive layout with Object Lock and SHA-256 "
            "checksums, then check every object (lock, retention, checksum, read-back). "
            "While S3 is unreachable the session is spooled locally and retried."
        ),
    )
    parser.add_argument("path", nargs="?", type=Path, help="a session dir, or a dir of sessions")
    add_flag(parser, "--to", env="AIRLOCK_ARCHIVE_TO", help="s3://BUCKET/PREFIX or a directory")
    add_flag(parser, "--endpoint-url", env="AIRLOCK_S3_ENDPOINT_URL", help="S3 endpoint override")
    add_flag(
        parser,
        "--mode",
        env="AIRLOCK_ARCHIVE_MODE",
        choices=[m.value.lower() for m in LockMode],
        default="compliance",
        help="Object Lock mode",
    )
    add_flag(
        parser,
        "--retention-days",
        env="AIRLOCK_ARCHIVE_RETENTION_DAYS",
        type=int,
        default=DEFAULT_RETENTION_DAYS,
        help="retain until the seal time plus this many days",
    )
    add_flag(
        parser,
        "--allow-unlocked",
        env="AIRLOCK_ARCHIVE_ALLOW_UNLOCKED",
        action="store_true",
        help="accept a bucket without Object Lock (recorded in the receipt and on each object)",
    )
    add_flag(parser, "--spool", env="AIRLOCK_SPOOL", type=Path, help="spool directory")
    add_flag(
        parser,
        "--retry-for",
        env="AIRLOCK_ARCHIVE_RETRY_FOR",
        type=float,
        default=60.0,
        help="seconds to keep retrying an unreachable archive before failing",
    )
    add_flag(
        parser,
        "--drain-spool",
        env="AIRLOCK_ARCHIVE_DRAIN_SPOOL",
        action="store_true",
        help="archive every spooled session (PATH and --to not needed)",
    )
    add_flag(
        parser,
        "--delete-local",
        env="AIRLOCK_ARCHIVE_DELETE_LOCAL",
        action="store_true",
        help="delete the local session directory after its archived copy is verified",
    )
    add_flag(
        parser, "--receipt", env="AIRLOCK_ARCHIVE_RECEIPT", type=Path, help="write receipts (JSON)"
    )
    add_flag(
        parser, "--json", env="AIRLOCK_JSON", action="store_true", help="print receipts as JSON"
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    spool_dir: Path = args.spool or default_spool_dir()
    if args.drain_spool:
        receipts = _drain(spool_dir, args)
    else:
        sessions = _sessions(args)
        receipts = []
        with ItemProgress("archived", len(sessions)) as progress:
            for path in sessions:
                receipts.append(_archive_one(path, args, spool_dir))
                progress.advance(path.name)
    _report(receipts, args)
    return 0


def _sessions(args: argparse.Namespace) -> list[Path]:
    if args.path is None or not args.to:
        raise UsageError(
            "archive needs PATH and --to", hint="airlock archive PATH --to s3://BUCKET/PREFIX"
        )
    path: Path = args.path
    if (path / EVENTS_NAME).exists():
        return [path]
    if not path.is_dir():
        raise UsageError(f"{path} is not a session directory")
    found = [log.parent for log in find_logs(path, archived=False)]
    unsealed = [p.name for p in found if not (p / MANIFEST_NAME).exists()]
    if unsealed:
        raise UsageError(
            f"{len(unsealed)} session(s) in {path} are not sealed: {', '.join(unsealed[:5])}",
            hint="seal them with `airlock seal PATH` first",
        )
    if not found:
        raise UsageError(f"no sessions in {path}")
    return found


def _options(mode: str, days: int, allow_unlocked: bool, url: str) -> ArchiveOptions:
    if days < 1:
        raise UsageError("--retention-days must be at least 1")
    local = parse_url(url)[0] == "file"
    return ArchiveOptions(LockMode(mode.upper()), days, allow_unlocked or local)


def _archive_one(path: Path, args: argparse.Namespace, spool_dir: Path) -> Receipt:
    options = _options(args.mode, args.retention_days, args.allow_unlocked, args.to)
    sink = _sink(args.to, args.endpoint_url)
    try:
        receipt = archive_session(path, sink, options)
    except ArchiveUnreachable as first:
        request = SpoolRequest(
            args.to,
            args.endpoint_url,
            args.mode,
            args.retention_days,
            args.allow_unlocked,
            str(path),
        )
        entry_path = spool_session(path, spool_dir, request)
        _say(f"archive unreachable ({first.message}); spooled at {entry_path}")
        receipt = _retry(lambda: archive_session(path, sink, options), args.retry_for, entry_path)
        shutil.rmtree(entry_path)
    _delete_local(path, receipt, args.delete_local)
    return receipt


def _retry(func: Callable[[], Receipt], retry_for: float, entry_path: Path) -> Receipt:
    try:
        return with_backoff(func, retry_for, on_retry=lambda e, w: _say(f"retrying in {w:.1f}s"))
    except ArchiveUnreachable as exc:
        raise ArchiveUnreachable(
            f"{exc.message}; the session stays spooled at {entry_path}",
            hint="run `airlock archive --drain-spool` once the archive is reachable",
        ) from exc


def _drain(spool_dir: Path, args: argparse.Namespace) -> list[Receipt]:
    entries = pending(spool_dir)
    receipts = []
    with ItemProgress("drained", len(entries)) as progress:
        for entry in entries:
            receipts.append(_drain_one(entry, args))
            progress.advance(entry.path.name)
    if not entries:
        _say(f"spool {spool_dir} is empty")
    return receipts


def _drain_one(entry: SpoolEntry, args: argparse.Namespace) -> Receipt:
    req = entry.request
    options = _options(req.mode, req.retention_days, req.allow_unlocked, req.to)
    sink = _sink(req.to, args.endpoint_url or req.endpoint_url)
    receipt = with_backoff(lambda: archive_session(entry.path, sink, options), args.retry_for)
    remove_entry(entry)
    source = Path(req.source)
    if (source / MANIFEST_NAME).exists():
        _delete_local(source, receipt, args.delete_local)
    return receipt


def _delete_local(path: Path, receipt: Receipt, wanted: bool) -> None:
    if wanted and receipt.verified:
        shutil.rmtree(path)
        _say(f"deleted local copy {path} (archived copy verified)")


def _sink(url: str, endpoint_url: str | None) -> ArchiveSink:
    sink = make_sink(url, endpoint_url)
    return _with_progress(sink) if sys.stderr.isatty() else sink


def _with_progress(sink: ArchiveSink) -> ArchiveSink:
    from airlock.archive.s3 import S3Sink

    if isinstance(sink, S3Sink):
        sink.progress = _progress_bar
    return sink


def _progress_bar(key: str, size: int) -> Callable[[int], None]:
    from rich.progress import Progress

    progress = Progress(transient=True)
    task = progress.add_task(key.rsplit("/", 2)[-2], total=size)
    progress.start()
    done = 0

    def advance(amount: int) -> None:
        nonlocal done
        done += amount
        progress.update(task, advance=amount)
        if done >= size:
            progress.stop()

    return advance


def _report(receipts: list[Receipt], args: argparse.Namespace) -> None:
    data = [r.to_dict() for r in receipts]
    if args.receipt:
        try:
            args.receipt.write_text(json.dumps(data, indent=2) + "\n")
        except OSError as exc:
            raise ArchiveError(f"cannot write the receipt {args.receipt}: {exc.strerror}") from exc
    if args.json:
        print(json.dumps(data, indent=2))
        return
    for r in receipts:
        lock = f"{r.mode} until {r.retain_until}" if r.lock_enabled else "NO OBJECT LOCK (allowed)"
        actions = ", ".join(f"{o.key.rsplit('/', 1)[-1]} {o.action}" for o in r.objects)
        print(f"archived {r.session_id} to {r.url}: {lock}; verified ({actions})")


def _say(text: str) -> None:
    print(f"airlock: {text}", file=sys.stderr)
