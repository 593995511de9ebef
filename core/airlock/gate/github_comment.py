"""The ``github-comment`` backend: no broker, no App — a PR comment, answered by comment or review.

The job posts a comment on its pull request describing the held operation, then polls the PR's
comments and reviews with its own token (``GITHUB_TOKEN`` with ``pull-requests: write``). A
comment or review whose body has a line ``/airlock approve <id>`` or ``/airlock deny <id>``
decides, if its author passes the same click-time checks as everywhere else (not a bot, not the
requester, not the PR author unless allowed, enough permission, a named approver).

What it does not guarantee: the job's token and this process decide together, so an agent that
can reach the token in the same job can forge the answer. Use it where a broker cannot be hosted,
with the agent's steps kept away from the token, and prefer ``github-check`` otherwise.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from airlock.audit.keys import SigningKey
from airlock.events import EventType
from airlock.gate._polling import PollingForgeBackend
from airlock.gate.github_api import GitHubApi, GitHubRights
from airlock.gate.interface import (
    Answer,
    ApprovalRequest,
    GateError,
    Operation,
    Record,
    format_time,
)
from airlock.gate.rules import ApproverRules, Clicker, approve_command, code_fence

__all__ = ["GitHubCommentBackend", "comment_body"]

log = logging.getLogger("airlock.gate")

_PAGE = 100


def comment_body(request_id: str, op: Operation, requester: str | None, expires_at: float) -> str:
    """The pull request comment that asks for a decision."""
    fence = code_fence(op.text)
    return (
        f"### Airlock approval needed: rule `{op.rule_id}`\n\n"
        f"Requested by `{requester or 'unknown'}` in run `{op.run_id or '-'}` at commit "
        f"`{(op.commit or '-')[:12]}`. Expires {format_time(expires_at)} (unanswered = denied).\n\n"
        f"Operation (masked), hash `{op.operation_hash()}`:\n\n{fence}\n{op.text}\n{fence}\n\n"
        f"Answer with a comment or review containing `/airlock approve {request_id}` or "
        f"`/airlock deny {request_id}` on a line of its own. The requester, the pull request "
        "author and bots cannot approve."
    )


def _unsupported(rules: ApproverRules) -> str | None:
    if rules.min_approvals > 1:
        return "min_approvals above 1"
    if rules.require_justification:
        return "require_justification (comments are not tied to a button)"
    return None


class GitHubCommentBackend(PollingForgeBackend):
    """Post a comment on the pull request and poll comments and reviews for the answer."""

    name: ClassVar[str] = "github-comment"

    def __init__(
        self,
        api: GitHubApi,
        repository: str,
        pull_request: int,
        *,
        key: SigningKey,
        record: Record | None = None,
        requester: str | None = None,
        requester_id: str | None = None,
        approvers: ApproverRules | None = None,
    ) -> None:
        super().__init__(
            key=key,
            record=record,
            requester=requester,
            requester_id=requester_id,
            approvers=approvers,
            unsupported=_unsupported,
        )
        self._api = api
        self._repo = repository
        self._number = pull_request
        self._seen: set[tuple[str, int]] = set()
        self._pages = {"comments": 1, "reviews": 1}

    def _submit(self, req: ApprovalRequest) -> None:
        pr = self._api.pull_request(self._repo, self._number)
        self._author_id = str((pr.get("user") or {}).get("id") or "") or None
        expires = req.expires_at or time.time() + 3600
        body = comment_body(req.request_id, req.operation, self._requester, expires)
        path = f"/repos/{self._repo}/issues/{self._number}/comments"
        comment = self._api.call("POST", path, {"body": body})
        self._seen.add(("comments", int(comment.get("id", 0))))
        self._emit(
            EventType.APPROVAL_POSTED,
            {"request_id": req.request_id, "url": comment.get("html_url")},
        )

    def _fetch(self, req: ApprovalRequest) -> Answer | None:
        try:
            items = self._new("comments", f"/repos/{self._repo}/issues/{self._number}/comments")
            items += self._new("reviews", f"/repos/{self._repo}/pulls/{self._number}/reviews")
        except GateError as exc:
            log.info("approval %s: GitHub unreachable, still holding: %s", req.request_id, exc)
            return None
        rights = GitHubRights(self._api, self._repo)
        return self._first_answer(req, items, lambda r, item: self._judge(r, item, rights))

    def _new(self, kind: str, path: str) -> list[dict[str, Any]]:
        fresh: list[dict[str, Any]] = []
        while True:
            params = {"per_page": _PAGE, "page": self._pages[kind]}
            page = self._api.call("GET", path, params=params)
            items = [i for i in page if isinstance(i, dict)] if isinstance(page, list) else []
            fresh += [i for i in items if (kind, int(i.get("id", 0))) not in self._seen]
            self._seen.update((kind, int(i.get("id", 0))) for i in items)
            if len(items) < _PAGE:
                return fresh
            self._pages[kind] += 1

    def _judge(
        self, req: ApprovalRequest, item: Mapping[str, Any], rights: GitHubRights
    ) -> Answer | None:
        command = approve_command(str(item.get("body") or ""))
        if command is None or command[1] != req.request_id:
            return None
        if item.get("updated_at", item.get("created_at")) != item.get("created_at"):
            log.info("approval %s: an edited comment answers nothing", req.request_id)
            return None  # only a comment as first written counts (it may have said "lgtm")
        approve = command[0]
        user = item.get("user") or {}
        clicker = Clicker(
            str(user.get("login", "")), str(user.get("id", "")), user.get("type") == "Bot"
        )
        if not self._entitled(req, clicker, approve=approve, rights=rights):
            return None
        verdict = "approved" if approve else "denied"
        return Answer(
            approve, f"github:{clicker.login}", req.operation_hash, f"{verdict} in a comment"
        )
