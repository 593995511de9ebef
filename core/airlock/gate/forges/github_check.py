"""The ``github-check`` forge: a check run with Approve / Deny buttons on the pull request.

Posted only on a pull request at the job's commit (its head, or its test merge commit: a
``pull_request`` workflow runs ``refs/pull/N/merge``); a click counts only on that check run,
for that head, with a button for that operation's hash. Bodies: :mod:`airlock.gate.github_check`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from airlock.errors import PolicyDenied
from airlock.gate.forges.interface import Click, Forge, ForgeRef, ForgeRequest, Shown
from airlock.gate.forges.payloads import CheckRunEvent
from airlock.gate.github_api import GitHubApi, GitHubRights
from airlock.gate.github_check import (
    check_run_body,
    outcome_body,
    parse_identifier,
    progress_body,
)
from airlock.gate.interface import Decision
from airlock.gate.rules import Clicker, Rights

__all__ = ["GitHubCheckForge", "pr_runs_commit"]

log = logging.getLogger("airlock.gate")


class GitHubCheckForge(Forge):
    """Check runs through a GitHub App installation (``api`` builds its client on first use)."""

    name: ClassVar[str] = "github-check"
    source: ClassVar[str] = "github"

    def __init__(self, api: Callable[[], GitHubApi], installation_id: int) -> None:
        self._api = api
        self._installation_id = installation_id

    def post(self, request: ForgeRequest) -> ForgeRef:
        api = self._api()
        pr = api.pull_request(request.repository, request.target)
        head_sha = str((pr.get("head") or {}).get("sha", ""))
        if not pr_runs_commit(pr, request.job_sha):
            log.info(
                "approval refused: PR #%s head %s is not the job's commit %s",
                request.target,
                head_sha[:12],
                request.job_sha[:12],
            )
            raise PolicyDenied(
                f"pull request #{request.target} is not at this job's commit: an approval is "
                "posted only on the pull request the job runs for"
            )
        body = check_run_body(
            request_id=request.request_id,
            op=request.op,
            head_sha=head_sha,
            requester=request.requester,
            expires_at=request.expires_at,
            details_url=pr.get("html_url"),
        )
        check = api.call("POST", f"/repos/{request.repository}/check-runs", body)
        author = str((pr.get("user") or {}).get("login", "")) or None
        return ForgeRef(str(check.get("id")), check.get("html_url"), head_sha, author)

    def show_progress(self, shown: Shown, approvers: list[str], needed: int) -> None:
        body = progress_body(
            request_id=shown.request_id,
            op=shown.op,
            requester=shown.requester,
            expires_at=shown.expires_at,
            approvers=approvers,
            needed=needed,
        )
        self._api().call("PATCH", f"/repos/{shown.repository}/check-runs/{shown.ref}", body)

    def show_outcome(self, shown: Shown, status: str, decision: Decision) -> None:
        body = outcome_body(
            status,
            by=decision.by,
            at=decision.at,
            reason=decision.reason,
            operation_hash=shown.op.operation_hash(),
        )
        self._api().call("PATCH", f"/repos/{shown.repository}/check-runs/{shown.ref}", body)

    def author_id(self, shown: Shown) -> str | None:
        if shown.target is None:
            return None
        pr = self._api().pull_request(shown.repository, shown.target)
        author_id = (pr.get("user") or {}).get("id")
        return str(author_id) if author_id is not None else None

    def rights(self, shown: Shown) -> Rights:
        return GitHubRights(self._api(), shown.repository)

    def click(self, payload: Mapping[str, Any], delivery: str) -> Click | None:
        if payload.get("action") != "requested_action":
            return None
        event = CheckRunEvent.model_validate(payload)
        if event.installation is None or event.installation.id != self._installation_id:
            return None  # only our App's installation answers: no installation, no answer
        action = event.requested_action.identifier if event.requested_action else ""
        parsed = parse_identifier(action)
        sender = event.sender
        return Click(
            request_id=event.check_run.external_id or "",
            clicker=Clicker(sender.login, str(sender.id), sender.type == "Bot"),
            approve=bool(parsed and parsed[0]),
            deliveries=(("github", delivery),),
            where="the check run",
            repository_id=str(event.repository.id),
            ref=str(event.check_run.id),
            head_sha=event.check_run.head_sha,
            hash_prefix=parsed[1] if parsed else "",
        )

    def matches(self, click: Click, shown: Shown, head_sha: str | None) -> bool:
        return (
            super().matches(click, shown, head_sha)
            and click.ref == shown.ref
            and bool(head_sha)  # unknown head (a row from before heads were kept): no click
            and click.head_sha == head_sha
        )


def pr_runs_commit(pr: Mapping[str, Any], job_sha: str) -> bool:
    """True when the job runs the pull request's head commit, or its test merge commit."""
    if not job_sha:
        return False
    head = str((pr.get("head") or {}).get("sha") or "")
    merge = str(pr.get("merge_commit_sha") or "")
    return job_sha in (head, merge)
