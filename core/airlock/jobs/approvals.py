"""The approval-backend factory: one place that turns a backend name into a backend.

Used by ``airlock run`` (the session's ``approvals:`` policy) and ``airlock gate`` (its
``--backend``). Names: ``console``, ``file``, ``deny``, and the broker-backed forges
``github-check`` and ``gitlab`` (which need the job's broker URL and job token).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from airlock.audit.keys import SigningKey
from airlock.errors import UsageError
from airlock.gate import ConsoleBackend, DenyBackend, FileBackend
from airlock.gate.broker import ForgeTarget
from airlock.gate.interface import ApprovalBackend, Record

__all__ = ["BACKENDS", "BackendSettings", "approval_backend"]

BACKENDS = ("console", "file", "deny", "github-check", "gitlab")


@dataclass(frozen=True)
class BackendSettings:
    """What a backend may need; each takes only its own part."""

    timeout: float = 1800.0
    directory: Path | None = None  # file
    broker_url: str | None = None  # github-check, gitlab
    job_token: str | None = field(default=None, repr=False)
    target: ForgeTarget | None = None
    agent_shares_terminal: bool = False  # console: the agent could type into this terminal
    deny_reason: str | None = None


def approval_backend(
    kind: str, settings: BackendSettings, *, key: SigningKey, record: Record | None = None
) -> ApprovalBackend:
    """The backend called ``kind``; UsageError for an unknown name or a missing setting."""
    if kind == "console":
        return ConsoleBackend(
            key=key,
            record=record,
            default_timeout=settings.timeout,
            agent_shares_terminal=settings.agent_shares_terminal,
        )
    if kind == "file":
        if settings.directory is None:
            raise UsageError("the file backend needs a directory", hint="set approvals.dir / --dir")
        return FileBackend(settings.directory, key=key, record=record)
    if kind == "deny":
        if settings.deny_reason:
            return DenyBackend(key=key, record=record, reason=settings.deny_reason)
        return DenyBackend(key=key, record=record)
    if kind in ("github-check", "gitlab"):
        return _through_broker(kind, settings, key, record)
    raise UsageError(f"unknown approval backend {kind!r}", hint=f"use one of {', '.join(BACKENDS)}")


def _through_broker(
    kind: str, settings: BackendSettings, key: SigningKey, record: Record | None
) -> ApprovalBackend:
    from airlock.gate.github_check import GitHubCheckBackend
    from airlock.gate.gitlab_job import GitLabBackend  # no python-gitlab on the job side

    if settings.broker_url is None or settings.job_token is None:
        raise UsageError(
            f"the {kind} backend asks through the broker, and this job has no broker token",
            hint="run `airlock credentials --broker URL --audience AUD` first, "
            "or `airlock run --broker URL --audience AUD`",
        )
    cls = GitHubCheckBackend if kind == "github-check" else GitLabBackend
    return cls(
        settings.broker_url, settings.job_token, key=key, record=record, target=settings.target
    )
