"""The ``gitlab`` backend: a merge request note that describes the operation; answered by note.

Someone entitled replies ``/airlock approve <id>`` or ``/airlock deny <id>``. Two ways to hear it:

- with a broker (:class:`GitLabBackend`): the broker posts the note and receives note events on
  its GitLab webhook (``X-Gitlab-Token`` checked, each delivery and each note used once), checks
  the author's member access level at that moment, and the job long-polls the broker;
- without a broker (:class:`GitLabNotesBackend`): the job posts the note and polls the merge
  request's notes with its own API token, applying the same checks itself. Anyone who can write
  to the job's variables can then forge the answer: prefer the broker.

Either way the requester, the merge request's author (unless allowed) and bot users cannot
approve, and the first eligible answer is the decision.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any, ClassVar

import gitlab
import requests
from gitlab.exceptions import GitlabError, GitlabHttpError

from airlock.audit.keys import SigningKey
from airlock.audit.visible import visible_json
from airlock.events import EventType
from airlock.gate._polling import PollingForgeBackend
from airlock.gate.gitlab_job import GitLabBackend  # re-exported: the job's side lives there
from airlock.gate.interface import (
    Answer,
    ApprovalRequest,
    GateError,
    Operation,
    Record,
    format_time,
)
from airlock.gate.rules import ApproverRules, Clicker, code_fence, parse_command

__all__ = [
    "GitLabApi",
    "GitLabBackend",
    "GitLabNotesBackend",
    "GitLabRights",
    "note_body",
    "outcome_note",
    "progress_note",
]

log = logging.getLogger("airlock.gate")

_HINT = "check the GitLab URL, the token's api scope, and that the project and MR exist"


class GitLabApi:
    """The few GitLab REST calls the approval backends make (python-gitlab's HTTP layer)."""

    def __init__(self, url: str, *, private_token: str) -> None:
        self.url = url.rstrip("/")
        self._gl = gitlab.Gitlab(
            self.url, private_token=private_token, timeout=15, retry_transient_errors=False
        )

    def close(self) -> None:
        """Release the HTTP session."""
        self._gl.session.close()

    def call(
        self,
        verb: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        params: Mapping[str, Any] | None = None,
        missing_ok: bool = False,
    ) -> Any:
        """``verb /api/v4{path}``; None for a 404 when ``missing_ok``. Strings in ``body`` go
        out :func:`~airlock.audit.visible.visible` (no raw bidi/zero-width text in a note)."""
        body = visible_json(body) if body is not None else None
        try:
            if verb == "GET":
                return self._gl.http_get(path, query_data=dict(params or {}))
            if verb == "POST":
                return self._gl.http_post(path, post_data=dict(body or {}))
            return self._gl.http_put(path, post_data=dict(body or {}))
        except GitlabHttpError as exc:
            if missing_ok and exc.response_code == 404:
                return None
            raise GateError(
                f"GitLab refused {verb} {path}: {exc.response_code}", hint=_HINT
            ) from None
        except (GitlabError, requests.RequestException) as exc:
            raise GateError(
                f"cannot reach GitLab at {self.url}: {type(exc).__name__}", hint=_HINT
            ) from None

    def merge_request(self, project: str, iid: int) -> dict[str, Any]:
        """``GET /projects/:id/merge_requests/:iid``: author, head sha, web URL."""
        data: dict[str, Any] = self.call(
            "GET", f"/projects/{_id(project)}/merge_requests/{int(iid)}"
        )
        return data

    def post_note(self, project: str, iid: int, body: str) -> dict[str, Any]:
        """Add a note to the merge request."""
        path = f"/projects/{_id(project)}/merge_requests/{int(iid)}/notes"
        data: dict[str, Any] = self.call("POST", path, {"body": body})
        return data

    def update_note(self, project: str, iid: int, note_id: int, body: str) -> None:
        """Rewrite a note the token posted."""
        path = f"/projects/{_id(project)}/merge_requests/{int(iid)}/notes/{int(note_id)}"
        self.call("PUT", path, {"body": body})

    def notes(self, project: str, iid: int, page: int = 1) -> list[dict[str, Any]]:
        """One page (100) of the merge request's notes, oldest first."""
        path = f"/projects/{_id(project)}/merge_requests/{int(iid)}/notes"
        params = {"sort": "asc", "order_by": "created_at", "per_page": 100, "page": page}
        data = self.call("GET", path, params=params)
        return [n for n in data if isinstance(n, dict)] if isinstance(data, list) else []

    def access_level(self, project: str, user_id: str) -> int:
        """The user's effective access level on the project (0 when not a member)."""
        path = f"/projects/{_id(project)}/members/all/{int(user_id)}"
        data = self.call("GET", path, missing_ok=True)
        if not isinstance(data, dict) or data.get("state", "active") != "active":
            return 0
        level = data.get("access_level")
        return level if isinstance(level, int) else 0

    def in_group(self, group: str, user_id: str) -> bool:
        """True for an active (direct or inherited) member of ``group``."""
        data = self.call("GET", f"/groups/{_id(group)}/members/all/{int(user_id)}", missing_ok=True)
        return isinstance(data, dict) and data.get("state", "active") == "active"

    def is_bot(self, user_id: str) -> bool:
        """GitLab's own ``bot`` flag (project/group access tokens, service accounts)."""
        data = self.call("GET", f"/users/{int(user_id)}", missing_ok=True)
        return isinstance(data, dict) and bool(data.get("bot"))


class GitLabRights:
    """:class:`~airlock.gate.rules.Rights` for one project, asked of GitLab at click time."""

    def __init__(self, api: GitLabApi, project: str) -> None:
        self._api = api
        self._project = project

    def permission_level(self, clicker: Clicker) -> int:
        if not clicker.user_id.isdigit():
            return 0
        return self._api.access_level(self._project, clicker.user_id)

    def in_team(self, team: str, clicker: Clicker) -> bool:
        return clicker.user_id.isdigit() and self._api.in_group(team, clicker.user_id)


def note_body(request_id: str, op: Operation, requester: str | None, expires_at: float) -> str:
    """The merge request note that asks for a decision."""
    fence = code_fence(op.text)
    return (
        f"### Airlock approval needed: rule `{op.rule_id}`\n\n"
        f"Requested by `{requester or 'unknown'}` in pipeline `{op.run_id or '-'}` at commit "
        f"`{(op.commit or '-')[:12]}`. Expires {format_time(expires_at)} (unanswered = denied).\n\n"
        f"Operation (masked), hash `{op.operation_hash()}`:\n\n{fence}\n{op.text}\n{fence}\n\n"
        f"Reply `/airlock approve {request_id}` or `/airlock deny {request_id}`. "
        "The requester, the merge request author and bots cannot approve."
    )


def progress_note(
    request_id: str,
    op: Operation,
    requester: str | None,
    expires_at: float,
    approvers: list[str],
    needed: int,
) -> str:
    """The request note while more approvals are needed: "1 of 2 approvals" and by whom."""
    who = ", ".join(f"`{a}`" for a in approvers)
    return (
        f"{note_body(request_id, op, requester, expires_at)}\n\n"
        f"**{len(approvers)} of {needed} approvals** so far ({who}); each approver counts once."
    )


def outcome_note(request_id: str, status: str, by: str, at: str, reason: str) -> str:
    """The note rewritten once decided."""
    verdict = {"approved": "Approved", "denied": "Denied", "expired": "Expired (denied)"}[status]
    extra = f" Reason: {reason}" if reason else ""
    return f"### Airlock approval `{request_id}`: **{verdict}** by `{by}` at {at}.{extra}"


def _notes_unsupported(rules: ApproverRules) -> str | None:
    return "min_approvals above 1" if rules.min_approvals > 1 else None


class GitLabNotesBackend(PollingForgeBackend):
    """No broker: post the note and poll the merge request's notes with the job's API token."""

    name: ClassVar[str] = "gitlab-notes"

    def __init__(
        self,
        api: GitLabApi,
        project: str,
        merge_request: int,
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
            unsupported=_notes_unsupported,
        )
        self._api = api
        self._project = project
        self._iid = merge_request
        self._seen: set[int] = set()
        self._next_page = 1

    def _submit(self, req: ApprovalRequest) -> None:
        mr = self._api.merge_request(self._project, self._iid)
        self._author_id = str((mr.get("author") or {}).get("id") or "") or None
        expires = req.expires_at or time.time() + 3600
        note = self._api.post_note(
            self._project,
            self._iid,
            note_body(req.request_id, req.operation, self._requester, expires),
        )
        self._seen.add(int(note.get("id", 0)))
        self._emit(
            EventType.APPROVAL_POSTED,
            {"request_id": req.request_id, "url": mr.get("web_url"), "note_id": note.get("id")},
        )

    def _fetch(self, req: ApprovalRequest) -> Answer | None:
        try:
            notes = self._new_notes()
        except GateError:
            return None  # GitLab unreachable: keep holding until the deadline
        rights = GitLabRights(self._api, self._project)
        return self._first_answer(req, notes, lambda r, note: self._judge(r, note, rights))

    def _new_notes(self) -> list[dict[str, Any]]:
        fresh: list[dict[str, Any]] = []
        while True:
            page = self._api.notes(self._project, self._iid, self._next_page)
            fresh += [n for n in page if int(n.get("id", 0)) not in self._seen]
            self._seen.update(int(n.get("id", 0)) for n in page)
            if len(page) < 100:
                return fresh
            self._next_page += 1

    def _judge(
        self, req: ApprovalRequest, note: Mapping[str, Any], rights: GitLabRights
    ) -> Answer | None:
        command = parse_command(str(note.get("body", "")))
        if command is None or command.request_id != req.request_id or note.get("system"):
            return None
        if note.get("created_at") != note.get("updated_at"):
            log.info("approval %s: an edited note answers nothing", req.request_id)
            return None  # only a note as first written counts (it may have said "lgtm")
        approve = command.approve
        if approve and self._rules.require_justification and not command.justification:
            log.info("approval %s: note without the required justification", req.request_id)
            return None
        author = note.get("author") or {}
        clicker = Clicker(
            str(author.get("username", "")), str(author.get("id", "")), bool(author.get("bot"))
        )
        if not clicker.is_bot and clicker.user_id.isdigit() and self._api.is_bot(clicker.user_id):
            clicker = Clicker(clicker.login, clicker.user_id, True)
        if not self._entitled(req, clicker, approve=approve, rights=rights):
            return None
        reason = "approved in a merge request note" if approve else "denied in a merge request note"
        return Answer(approve, f"gitlab:{clicker.login}", req.operation_hash, reason)


def _id(project: str) -> str:
    return urllib.parse.quote(str(project), safe="")
