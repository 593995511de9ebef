"""The approval service: create and status for jobs, and the entry points of the webhooks.

ApprovalService            service.py   create, status, revoke hook; the facade routes use
 ├── ForgeDispatch         forges.py    the forges and their API clients; best-effort updates
 ├── Decider               decide.py    who may decide, the quorum, the signed decision
 │    └── ApprovalStore    store.py     requests, votes, deliveries (atomic across replicas)
 └── Webhooks              webhooks.py  GitHub / GitLab deliveries, deployment protection rules
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from airlock.broker.approvals.bodies import CreateBody
from airlock.broker.approvals.decide import Decider, WebhookResult
from airlock.broker.approvals.forges import ForgeDispatch, carries_text
from airlock.broker.approvals.store import PENDING, ApprovalRow, ApprovalStore
from airlock.broker.approvals.webhooks import Webhooks, github_signature
from airlock.broker.service import Broker
from airlock.broker.state import token_digest
from airlock.errors import PolicyDenied, UsageError
from airlock.gate.forges import ForgeRequest
from airlock.gate.interface import GateError, Operation
from airlock.gate.rules import ApproverRules, justification_required
from airlock.policy.broker_config import ApprovalsConfig

__all__ = [
    "ApprovalService",
    "WebhookResult",
    "github_signature",
]

log = logging.getLogger("airlock.broker.approvals")


class ApprovalService:
    """Create, answer and expire approval requests; talk to GitHub and GitLab."""

    def __init__(self, broker: Broker, *, clock: Callable[[], float] = time.time) -> None:
        self._broker = broker
        self._config: ApprovalsConfig = broker.config.approvals
        self.store = ApprovalStore(broker.store.engine)
        self._clock = clock
        self.forges = ForgeDispatch(self._config)
        self._decider = Decider(broker.key, self.store, self.forges, clock)
        self._webhooks = Webhooks(self._config, self._decider, self.forges)
        broker.on_revoke.append(self._decider.job_revoked)

    @property
    def version(self) -> int:
        """Bumped on every local decision: wakes long-polls early."""
        return self._decider.version

    def close(self) -> None:
        """Release forge HTTP sessions."""
        self.forges.close()

    def github_webhook(self, headers: Mapping[str, str], raw: bytes) -> WebhookResult:
        """Verify, parse and apply one GitHub delivery."""
        return self._webhooks.github(headers, raw)

    def gitlab_webhook(self, headers: Mapping[str, str], raw: bytes) -> WebhookResult:
        """Verify, parse and apply one GitLab delivery (note events)."""
        return self._webhooks.gitlab(headers, raw)

    # -- create -----------------------------------------------------------------------------------

    def create(self, job_token: str, body: CreateBody) -> ApprovalRow:
        """Register a request for the job holding ``job_token`` and show it on the forge."""
        digest, subject = self._job(job_token)
        op = Operation(**body.operation.model_dump())
        forge = "gitlab" if body.backend == "gitlab" else "github"
        bound = _bound_subject(subject, forge)
        repository, repository_id, run_id = bound.repository, bound.repository_id, bound.run_id
        _check_binding(op, repository, run_id, subject)
        now = self._clock()
        timeout = min(body.timeout, float(self._config.max_timeout))
        rules = [self._config.approvers.model_dump()]
        if body.approvers is not None:
            rules.append(body.approvers.model_dump())
        if not carries_text(body.backend) and justification_required(
            ApproverRules.from_dict(r) for r in rules
        ):
            raise UsageError(
                f"require_justification works only with the gitlab backend: {body.backend} "
                "cannot carry an approver's text (a check-run button has none)"
            )
        row = ApprovalRow(
            request_id=secrets.token_hex(16),
            job_digest=digest,
            backend=body.backend,
            repository=repository,
            repository_id=repository_id,
            run_id=run_id,
            target=body.pull_request if forge == "github" else body.merge_request,
            requester=bound.requester,
            author=None,
            operation=op.to_dict(),
            operation_hash=op.operation_hash(),
            rules=[ApproverRules.from_dict(r).to_dict() for r in rules],
            forge_ref=None,
            url=None,
            created_at=now,
            expires_at=now + timeout,
            status=PENDING,
            decided_by=None,
            decided_at=None,
            reason=None,
            signature=None,
            key_id=None,
            requester_id=bound.requester_id,
        )
        row = self._post(row, op, subject)
        log.info(
            "approval %s requested: backend=%s repository=%s rule=%s operation=%s",
            row.request_id,
            row.backend,
            row.repository,
            op.rule_id,
            row.operation_hash[:16],
        )
        return self.store.get(row.request_id) or row

    def _post(self, row: ApprovalRow, op: Operation, subject: Mapping[str, Any]) -> ApprovalRow:
        if row.backend == "github-environment":  # GitHub's own review UI shows it
            if self._config.github_app is None:
                raise UsageError("this broker has no github_app configured for github-environment")
            self.store.add(row)
            return row
        forge = self.forges.forge(row.backend)
        if row.target is None:
            what = (
                "pull request number (pull_request)"
                if forge.source == "github"
                else ("merge request iid (merge_request)")
            )
            raise UsageError(f"{row.backend} needs the {what}")
        self.store.add(row)
        request = ForgeRequest(
            row.request_id,
            op,
            row.repository,
            row.repository_id,
            row.target,
            row.requester,
            row.expires_at,
            str(subject.get("sha") or ""),
        )
        try:
            ref = forge.post(request)
        except (GateError, PolicyDenied):
            self._decider.close_unposted(row)
            raise
        self.store.set_forge(row.request_id, ref.ref, ref.url, ref.head_sha, ref.author)
        return row

    # -- status -----------------------------------------------------------------------------------

    def status(self, job_token: str, request_id: str) -> ApprovalRow:
        """The request, if this job made it; expires it first when its time is up."""
        digest, _ = self._job(job_token)
        row = self.store.get(request_id) if re.fullmatch(r"[0-9a-f]{32}", request_id) else None
        if row is None or not secrets.compare_digest(row.job_digest, digest):
            raise PolicyDenied("no such approval request for this job")
        return self._decider.expire_if_due(row)

    def _job(self, job_token: str) -> tuple[str, dict[str, Any]]:
        digest = token_digest(job_token)
        subject = self._broker.store.job_subject(digest)
        if subject is None:
            raise PolicyDenied("unknown or expired job token")
        return digest, subject


@dataclass(frozen=True)
class _Bound:
    """What a request is bound to, from the job's verified claims."""

    repository: str
    repository_id: str
    run_id: str | None
    requester: str | None  # the login, for humans to read
    requester_id: str | None  # the immutable id (GitHub actor_id, GitLab user_id)


def _bound_subject(subject: Mapping[str, Any], forge: str) -> _Bound:
    if forge == "github":
        repo, repo_id = subject.get("repository"), subject.get("repository_id")
        run, who, who_id = subject.get("run_id"), subject.get("actor"), subject.get("actor_id")
    else:
        repo, repo_id = subject.get("project_path"), subject.get("project_id")
        run, who, who_id = (
            subject.get("pipeline_id"),
            subject.get("user_login"),
            subject.get("user_id"),
        )
    if not repo or not repo_id:
        raise PolicyDenied(f"this job's token does not name a {forge} repository")
    return _Bound(
        str(repo),
        str(repo_id),
        str(run) if run else None,
        str(who) if who else None,
        str(who_id) if who_id else None,
    )


def _check_binding(
    op: Operation, repository: str, run_id: str | None, subject: Mapping[str, Any]
) -> None:
    if op.repository is not None and op.repository.lower() != repository.lower():
        raise PolicyDenied("the operation names another repository than this job's")
    if op.run_id is not None and run_id is not None and op.run_id != run_id:
        raise PolicyDenied("the operation names another run than this job's")
    sha = subject.get("sha")
    if op.commit is not None and sha and op.commit != sha:
        raise PolicyDenied("the operation names another commit than this job's")
