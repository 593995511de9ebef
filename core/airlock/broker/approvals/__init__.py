"""Approvals served by the broker: create, status (long-poll), GitHub and GitLab webhooks.

    POST /v1/approvals              Bearer job token, {backend, operation, timeout, pull_request…}
                                    → {request_id, operation_hash, expires_at, url}
    GET  /v1/approvals/{id}?wait=S  Bearer job token (the same job) → status, held up to S seconds
    POST /v1/webhooks/github        X-Hub-Signature-256 (HMAC-SHA256 of the body), X-GitHub-Delivery
    POST /v1/webhooks/gitlab        X-Gitlab-Token, Idempotency-Key / X-Gitlab-Webhook-UUID

What the broker guarantees, whatever the replica:

- the repository, run and requester come from the job's verified OIDC claims, never from the
  body: a job can only ask about operations of its own repository and run;
- a click decides only when the clicker passes :func:`airlock.gate.rules.refusal` at that
  moment (not a bot, not the requester, not the PR/MR author unless allowed, enough permission,
  one of the named approvers), for the operation hash the button or note names;
- a request is decided once: ``UPDATE … WHERE status = 'pending'`` lets one click win a race;
- with ``min_approvals`` N it stays pending until N distinct entitled users approved (votes are
  kept in ``airlock_approval_votes``, written under a lock on the request row in the same
  transaction as the delivery id); one entitled deny decides at once;
- with ``require_justification`` an approval must say why (GitLab: text after the command);
- each webhook delivery id (and each GitLab note) is accepted once, in the same transaction as
  the decision: a replay gets 409 and changes nothing; so does a body that does not parse;
- an unanswered request expires to a denial; every outcome is signed with the broker's key.
"""

from __future__ import annotations

from airlock.broker.approvals.routes import approval_routes
from airlock.broker.approvals.service import ApprovalService, github_signature
from airlock.broker.approvals.store import APPROVALS, DELIVERIES, VOTES, ApprovalRow

__all__ = [
    "APPROVALS",
    "DELIVERIES",
    "VOTES",
    "ApprovalRow",
    "ApprovalService",
    "approval_routes",
    "github_signature",
]
