"""End of a job: seal what was left open, revoke the job's leases, verify, archive, report.

Each duty is attempted whatever happened to the others; a failed one is a problem in the
:class:`FinalizeResult` (exit code, message), never an exception. The domains are called
directly (audit, archive, the broker client); the CI platform's outputs and summary are the
caller's (``airlock ci finalize``, an edge).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from airlock.errors import AirlockError, ExitCode

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from airlock.archive.archiver import Receipt

__all__ = [
    "ArchivePlan",
    "FinalizeResult",
    "FinalizeSettings",
    "archive_with_spool",
    "finalize_sessions",
    "revoke_job_leases",
    "sealed_sessions",
    "trusted_keys",
    "verify_into",
    "write_report",
]

Say = Callable[[str], None]


@dataclass(frozen=True)
class ArchivePlan:
    """Where and how sessions are archived (``airlock archive``'s settings)."""

    to: str
    endpoint_url: str | None = None
    mode: str = "compliance"
    retention_days: int | None = None
    allow_unlocked: bool = False
    spool_dir: Path | None = None
    retry_for: float = 60.0


@dataclass(frozen=True)
class FinalizeSettings:
    sessions: Path
    key: Path | None = None  # the signing key that seals left-open sessions
    archive: ArchivePlan | None = None
    revoke: Callable[[], int] | None = None  # ends the job's leases (revoke_job_leases)
    note: str | None = None  # e.g. "cancelled: …", shown at the top of the summary


@dataclass
class FinalizeResult:
    """What ``finalize`` did: per-duty problems (exit code, message) and the last session."""

    problems: list[tuple[int, str]] = field(default_factory=list)
    sessions: list[Path] = field(default_factory=list)
    sealed_late: list[Path] = field(default_factory=list)
    archive_urls: dict[str, str] = field(default_factory=dict)
    verdicts: dict[str, dict[str, str]] = field(default_factory=dict)
    note: str | None = None  # e.g. "cancelled: …", shown at the top of the summary

    def fail(self, code: int, message: str) -> None:
        """Record a duty that failed."""
        self.problems.append((code, message))

    def exit_code(self, fail_mode: str) -> int:
        """The most serious problem's code under fail-mode closed; 0 under open."""
        if not self.problems or fail_mode == "open":
            return 0
        return max(code for code, _ in self.problems)


def finalize_sessions(settings: FinalizeSettings, say: Say) -> FinalizeResult:
    """Seal, revoke, verify and archive: every duty, each whatever happened to the others."""
    result = FinalizeResult(note=settings.note)
    sessions = settings.sessions
    _restore_checkouts(say)
    if sessions.is_dir():
        _seal_open_sessions(sessions, settings.key, result, say)
        result.sessions = sealed_sessions(sessions)
    if settings.revoke is not None:
        _revoke(settings.revoke, result, say)
    trusted = trusted_keys()
    for session in result.sessions:
        verify_into(session, result, trusted)
        if settings.archive is not None:
            _archive(session, settings.archive, result, say)
    if not result.sessions:
        result.fail(int(ExitCode.UNAVAILABLE), f"no sealed session in {sessions}: nothing recorded")
    return result


def sealed_sessions(sessions: Path) -> list[Path]:
    """The sealed sessions in ``sessions``, oldest seal first."""
    from airlock.audit.reader import MANIFEST_FILE

    found = [p.parent for p in sessions.glob(f"*/{MANIFEST_FILE}")]
    return sorted(found, key=lambda p: (p / MANIFEST_FILE).stat().st_mtime)


def trusted_keys(key_files: list[str] | None = None) -> Mapping[str, Ed25519PublicKey]:
    """The given keys plus the local default signing key when it exists."""
    from airlock.audit import default_key_path, load_public_keys

    paths = [Path(p) for p in key_files or []]
    default = default_key_path()
    if default.exists():
        paths.append(default)
    return load_public_keys(paths)


def verify_into(
    session: Path, result: FinalizeResult, trusted: Mapping[str, Ed25519PublicKey]
) -> None:
    from airlock.archive.report import verification_state

    verdict = verification_state(session, trusted)
    result.verdicts[session.name] = verdict
    if verdict["state"] == "failed":
        result.fail(int(ExitCode.VERIFY_FAILED), f"{session.name}: {verdict['text']}")


def write_report(session: Path, target: Path, result: FinalizeResult) -> bool:
    """The session's HTML report at ``target`` (a new file: what held the name is removed, never
    written through); a failure is a problem of ``result``."""
    from airlock.archive.report import render_report
    from airlock.ci.artifacts import replace_file

    try:
        replace_file(target, render_report(session, trusted_keys()).encode("utf-8"))
    except (AirlockError, OSError) as exc:
        why = exc.message if isinstance(exc, AirlockError) else exc.strerror
        result.fail(int(ExitCode.UNAVAILABLE), f"writing the HTML report failed: {why}")
        return False
    return True


def _seal_open_sessions(
    sessions: Path, key_path: Path | None, result: FinalizeResult, say: Say
) -> None:
    from airlock.audit import load_signing_key
    from airlock.jobs.request import seal_abandoned_sessions

    try:
        result.sealed_late = seal_abandoned_sessions(sessions, load_signing_key(key_path))
    except AirlockError as exc:
        result.fail(int(exc.exit_code), f"sealing left-open sessions failed: {exc.message}")
    for path in result.sealed_late:
        say(f"sealed {path.name} as incomplete: its recorder stopped before the end")


def _restore_checkouts(say: Say) -> None:
    """The job's git credentials a killed ``airlock run`` left hidden: back for later steps."""
    from airlock.brokerclient import default_state_dir
    from airlock.jobs.request import restore_abandoned_checkouts

    restore_abandoned_checkouts(default_state_dir(), say)


def revoke_job_leases() -> int:
    """End this job's leases at the broker (the job state `airlock credentials` saved); returns
    how many. No job state: nothing was issued, nothing to end."""
    from airlock.jobs.credentials import revoke_job_leases as revoke

    return revoke() or 0


def _revoke(revoke: Callable[[], int], result: FinalizeResult, say: Say) -> None:
    try:
        revoked = revoke()
    except AirlockError as exc:
        result.fail(
            int(exc.exit_code), f"revoking the job's credential leases failed: {exc.message}"
        )
        return
    say(f"revoked {revoked} lease(s)")


def _archive(session: Path, plan: ArchivePlan, result: FinalizeResult, say: Say) -> None:
    try:
        receipt = archive_with_spool(session, plan, say)
    except AirlockError as exc:
        result.fail(int(exc.exit_code), f"archiving {session.name} failed: {exc.message}")
        return
    result.archive_urls[session.name] = receipt.url
    lock = f"{receipt.mode} until {receipt.retain_until}" if receipt.lock_enabled else "NO LOCK"
    say(f"archived {receipt.session_id} to {receipt.url}: {lock}; verified")


def archive_with_spool(session: Path, plan: ArchivePlan, say: Say) -> Receipt:
    """Archive and verify ``session``; while the archive is unreachable, spool it locally and
    retry for ``plan.retry_for`` seconds (it stays spooled if that fails)."""
    from airlock.archive.archiver import DEFAULT_RETENTION_DAYS, ArchiveOptions, archive_session
    from airlock.archive.fetch import make_sink
    from airlock.archive.interface import ArchiveUnreachable, LockMode
    from airlock.archive.layout import parse_url
    from airlock.archive.spool import (
        SpoolRequest,
        default_spool_dir,
        spool_session,
        with_backoff,
    )
    from airlock.errors import UsageError

    days = plan.retention_days if plan.retention_days is not None else DEFAULT_RETENTION_DAYS
    if days < 1:
        raise UsageError("--retention-days must be at least 1")
    local = parse_url(plan.to)[0] == "file"
    options = ArchiveOptions(LockMode(plan.mode.upper()), days, plan.allow_unlocked or local)
    sink = make_sink(plan.to, plan.endpoint_url)
    try:
        return archive_session(session, sink, options)
    except ArchiveUnreachable as first:
        request = SpoolRequest(
            plan.to, plan.endpoint_url, plan.mode, days, plan.allow_unlocked, str(session)
        )
        entry = spool_session(session, plan.spool_dir or default_spool_dir(), request)
        say(f"archive unreachable ({first.message}); spooled at {entry}")
        try:
            receipt = with_backoff(
                lambda: archive_session(session, sink, options),
                plan.retry_for,
                on_retry=lambda _e, wait: say(f"retrying in {wait:.1f}s"),
            )
        except ArchiveUnreachable as exc:
            raise ArchiveUnreachable(
                f"{exc.message}; the session stays spooled at {entry}",
                hint="run `airlock archive --drain-spool` once the archive is reachable",
            ) from exc
        shutil.rmtree(entry)
        return receipt
