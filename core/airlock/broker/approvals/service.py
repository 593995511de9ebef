"""The approval service: create, status, and the decisions that webhooks bring."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.responses import JSONResponse

from airlock.broker.approvals.bodies import (
    CheckRunEvent,
    CreateBody,
    DeploymentRuleEvent,
    GhInstallation,
    NoteEvent,
)
from airlock.broker.approvals.store import (
    PENDING,
    ApprovalRow,
    ApprovalStore,
    Replayed,
    Tally,
    Vote,
)
from airlock.broker.service import Broker
from airlock.broker.state import token_digest
from airlock.errors import AirlockError, PolicyDenied, UsageError
from airlock.gate._github import GitHubApi, GitHubRights
from airlock.gate._rules import (
    MAX_JUSTIFICATION,
    ApproverRules,
    Clicker,
    Rights,
    justification_required,
    parse_command,
    refusal,
    required_approvals,
)
from airlock.gate.github_check import (
    check_run_body,
    outcome_body,
    parse_identifier,
    progress_body,
)
from airlock.gate.gitlab import GitLabApi, GitLabRights, note_body, outcome_note, progress_note
from airlock.gate.interface import Decision, GateError, Operation
from airlock.mask import Masker, MaskSettings
from airlock.policy.broker_config import ApprovalsConfig
from airlock.providers._secrets import resolve_secret

__all__ = [
    "ApprovalService",
    "WebhookResult",
    "github_signature",
]

log = logging.getLogger("airlock.broker.approvals")

_CALLBACK = re.compile(
    r"^/repos/([A-Za-z0-9-]+/[A-Za-z0-9._-]+)/actions/runs/(\d+)/deployment_protection_rule$"
)


# -- the service ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WebhookResult:
    """What a webhook delivery did; ``status`` is the HTTP status to answer with."""

    result: str
    status: int = 200
    reason: str = ""
    request_id: str | None = None

    def response(self) -> JSONResponse:
        body = {"result": self.result}
        if self.reason:
            body["reason"] = self.reason
        if self.request_id:
            body["request_id"] = self.request_id
        return JSONResponse(body, status_code=self.status)


class ApprovalService:
    """Create, answer and expire approval requests; talk to GitHub and GitLab."""

    def __init__(self, broker: Broker, *, clock: Callable[[], float] = time.time) -> None:
        self._broker = broker
        self._config: ApprovalsConfig = broker.config.approvals
        self.store = ApprovalStore(broker.store.engine)
        self._clock = clock
        self._github: GitHubApi | None = None
        self._gitlab: GitLabApi | None = None
        self._masker: Masker | None = None
        self.version = 0  # bumped on every local decision: wakes long-polls early

    def close(self) -> None:
        """Release forge HTTP sessions."""
        for api in (self._github, self._gitlab):
            if api is not None:
                api.close()

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
        if body.backend != "gitlab" and justification_required(
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
        if row.backend == "github-check":
            return self._post_check_run(row, op, str(subject.get("sha") or ""))
        if row.backend == "gitlab":
            return self._post_note(row, op)
        if self._config.github_app is None:
            raise UsageError("this broker has no github_app configured for github-environment")
        self.store.add(row)
        return row

    def _post_check_run(self, row: ApprovalRow, op: Operation, job_sha: str) -> ApprovalRow:
        if row.target is None:
            raise UsageError("github-check needs the pull request number (pull_request)")
        api = self.github()
        pr = api.pull_request(row.repository, row.target)
        head_sha = str((pr.get("head") or {}).get("sha", ""))
        if not _pr_runs_commit(pr, job_sha):
            log.info(
                "approval refused: PR #%s head %s is not the job's commit %s",
                row.target,
                head_sha[:12],
                job_sha[:12],
            )
            raise PolicyDenied(
                f"pull request #{row.target} is not at this job's commit: an approval is posted "
                "only on the pull request the job runs for"
            )
        author = str((pr.get("user") or {}).get("login", "")) or None  # for humans to read
        row = _replace(row, author=author, head_sha=head_sha)
        self.store.add(row)
        body = check_run_body(
            request_id=row.request_id,
            op=op,
            head_sha=head_sha,
            requester=row.requester,
            expires_at=row.expires_at,
            details_url=pr.get("html_url"),
        )
        try:
            check = api.call("POST", f"/repos/{row.repository}/check-runs", body)
        except GateError:
            self._close_unposted(row)
            raise
        self.store.set_forge(row.request_id, str(check.get("id")), check.get("html_url"))
        return row

    def _post_note(self, row: ApprovalRow, op: Operation) -> ApprovalRow:
        iid = row.target
        if iid is None:
            raise UsageError("gitlab needs the merge request iid (merge_request)")
        api = self.gitlab()
        mr = api.merge_request(row.repository_id, iid)
        author = str((mr.get("author") or {}).get("username", "")) or None  # for humans to read
        row = _replace(row, author=author)
        self.store.add(row)
        try:
            note = api.post_note(
                row.repository_id,
                iid,
                note_body(row.request_id, op, row.requester, row.expires_at),
            )
        except GateError:
            self._close_unposted(row)
            raise
        url = f"{mr.get('web_url')}#note_{note.get('id')}" if mr.get("web_url") else None
        self.store.set_forge(row.request_id, str(note.get("id")), url)
        return row

    def _close_unposted(self, row: ApprovalRow) -> None:
        decision = self._sign(row, approved=False, by="airlock", reason="could not be posted")
        self.store.decide(row.request_id, "denied", decision, [])

    # -- status -----------------------------------------------------------------------------------

    def status(self, job_token: str, request_id: str) -> ApprovalRow:
        """The request, if this job made it; expires it first when its time is up."""
        digest, _ = self._job(job_token)
        row = self.store.get(request_id) if re.fullmatch(r"[0-9a-f]{32}", request_id) else None
        if row is None or not secrets.compare_digest(row.job_digest, digest):
            raise PolicyDenied("no such approval request for this job")
        return self._expire_if_due(row)

    def _expire_if_due(self, row: ApprovalRow) -> ApprovalRow:
        if row.status != PENDING or self._clock() < row.expires_at:
            return row
        decision = self._sign(row, approved=False, by="airlock", reason="expired")
        if self.store.decide(row.request_id, "expired", decision, []):
            log.info("approval %s expired: denied", row.request_id)
            self._show_outcome(row, "expired", decision)
            self.version += 1
        return self.store.get(row.request_id) or row

    # -- GitHub webhook ---------------------------------------------------------------------------

    def github_webhook(self, headers: Mapping[str, str], raw: bytes) -> WebhookResult:
        """Verify, parse and apply one GitHub delivery."""
        app = self._config.github_app
        if app is None:
            return WebhookResult("not-configured", 404, "this broker has no github_app")
        secret = resolve_secret(app.webhook_secret.get_secret_value(), "github webhook_secret")
        presented = headers.get("x-hub-signature-256", "").encode("utf-8", "replace")
        if not hmac.compare_digest(presented, github_signature(secret, raw).encode()):
            log.warning("github webhook refused: bad or missing X-Hub-Signature-256")
            return WebhookResult("bad-signature", 401, "X-Hub-Signature-256 does not match")
        event = headers.get("x-github-event", "")
        delivery = headers.get("x-github-delivery", "")
        if event == "ping":
            return WebhookResult("pong")
        if not delivery or len(delivery) > 128:
            return WebhookResult("bad-request", 400, "X-GitHub-Delivery is missing")
        payload = _json_object(raw)
        if event == "check_run" and payload.get("action") == "requested_action":
            return self._check_run_click(CheckRunEvent.model_validate(payload), delivery)
        if event == "deployment_protection_rule" and payload.get("action") == "requested":
            return self._deployment_rule(DeploymentRuleEvent.model_validate(payload), delivery)
        return WebhookResult("ignored", 202)

    def _check_run_click(self, event: CheckRunEvent, delivery: str) -> WebhookResult:
        row = self.store.get(event.check_run.external_id or "")
        if (
            row is None
            or row.backend != "github-check"
            or row.forge_ref != str(event.check_run.id)
            or row.repository_id != str(event.repository.id)
            or (row.head_sha and event.check_run.head_sha != row.head_sha)
            or not self._our_installation(event.installation)
        ):
            return WebhookResult("ignored", 202, "not an Airlock approval check run")
        parsed = parse_identifier(
            event.requested_action.identifier if event.requested_action else ""
        )
        if parsed is None:
            return WebhookResult("bad-request", 400, "unknown requested action")
        approve, hash_prefix = parsed
        clicker = Clicker(event.sender.login, str(event.sender.id), event.sender.type == "Bot")
        deliveries = [("github", delivery)]
        if not row.operation_hash.startswith(hash_prefix):
            return self._refuse(row, deliveries, "the button was for another operation")
        rights = GitHubRights(self.github(), row.repository)
        click = _Click(clicker, approve)
        author_id = self._github_author_id(row) if approve else None
        return self._click(row, click, rights, deliveries, "github", "the check run", author_id)

    def _github_author_id(self, row: ApprovalRow) -> str | None:
        """The pull request author's immutable id, read now (not when the request was made)."""
        if row.target is None:
            return None
        pr = self.github().pull_request(row.repository, row.target)
        author_id = (pr.get("user") or {}).get("id")
        return str(author_id) if author_id is not None else None

    def _gitlab_author_id(self, row: ApprovalRow) -> str | None:
        """The merge request author's immutable id, read now."""
        if row.target is None:
            return None
        mr = self.gitlab().merge_request(row.repository_id, row.target)
        author_id = (mr.get("author") or {}).get("id")
        return str(author_id) if author_id is not None else None

    def _deployment_rule(self, event: DeploymentRuleEvent, delivery: str) -> WebhookResult:
        app = self._config.github_app
        assert app is not None
        match = _CALLBACK.match(_url_path(event.deployment_callback_url))
        if match is None or match.group(1).lower() != event.repository.full_name.lower():
            return WebhookResult("bad-request", 400, "deployment_callback_url is not a review URL")
        if not self._our_installation(event.installation) or (
            event.environment not in app.environments
        ):
            return WebhookResult("ignored", 202, "the broker does not guard this environment")
        repo, run_id = match.group(1), match.group(2)
        try:
            self.store.consume([("github", delivery)])
        except Replayed:
            return WebhookResult("replayed", 409, "this delivery was already processed")
        plans = [
            self._expire_if_due(r)
            for r in self.store.pending_plans(str(event.repository.id), run_id)
        ]
        plans = [p for p in plans if p.status == PENDING]
        state, comment = _review(plans, run_id)
        try:
            self.github().call(
                "POST",
                f"/repos/{repo}/actions/runs/{run_id}/deployment_protection_rule",
                {"environment_name": event.environment, "state": state, "comment": comment},
            )
        except GateError:
            self.store.release([("github", delivery)])  # GitHub's redelivery may try again
            raise
        for plan in plans:
            decision = self._sign(
                plan, approved=True, by=f"github-environment:{event.environment}", reason=comment
            )
            self.store.decide(plan.request_id, "approved", decision, [])
        self.version += 1
        return WebhookResult(state)

    def _our_installation(self, installation: GhInstallation | None) -> bool:
        app = self._config.github_app
        return app is not None and (installation is None or installation.id == app.installation_id)

    # -- GitLab webhook ---------------------------------------------------------------------------

    def gitlab_webhook(self, headers: Mapping[str, str], raw: bytes) -> WebhookResult:
        """Verify, parse and apply one GitLab delivery (note events)."""
        gl = self._config.gitlab
        if gl is None:
            return WebhookResult("not-configured", 404, "this broker has no gitlab section")
        expected = resolve_secret(gl.webhook_token.get_secret_value(), "gitlab webhook_token")
        presented = headers.get("x-gitlab-token", "").encode("utf-8", "replace")
        if not hmac.compare_digest(presented, expected.encode()):
            log.warning("gitlab webhook refused: bad or missing X-Gitlab-Token")
            return WebhookResult("bad-token", 401, "X-Gitlab-Token does not match")
        delivery = (
            headers.get("idempotency-key")
            or headers.get("x-gitlab-webhook-uuid")
            or headers.get("x-gitlab-event-uuid")
            or ""
        )
        if not delivery or len(delivery) > 128:
            return WebhookResult(
                "bad-request", 400, "Idempotency-Key / X-Gitlab-Webhook-UUID missing"
            )
        payload = _json_object(raw)
        if payload.get("object_kind") != "note":
            return WebhookResult("ignored", 202)
        return self._note(NoteEvent.model_validate(payload), delivery)

    def _note(self, event: NoteEvent, delivery: str) -> WebhookResult:
        command = parse_command(event.object_attributes.note)
        if command is None or event.object_attributes.system or event.merge_request is None:
            return WebhookResult("ignored", 202)
        row = self.store.get(command.request_id)
        if (
            row is None
            or row.backend != "gitlab"
            or row.repository_id != str(event.project.id)
            or row.target != event.merge_request.iid
        ):
            return WebhookResult("ignored", 202, "not an Airlock request of this merge request")
        api = self.gitlab()
        user = event.user
        clicker = Clicker(user.username, str(user.id), api.is_bot(str(user.id)))
        deliveries = [("gitlab", delivery), ("gitlab-note", str(event.object_attributes.id))]
        rights = GitLabRights(api, row.repository_id)
        click = _Click(clicker, command.approve, self._justification(command.justification))
        author_id = self._gitlab_author_id(row) if command.approve else None
        return self._click(row, click, rights, deliveries, "gitlab", "a note", author_id)

    # -- shared -----------------------------------------------------------------------------------

    def _click(
        self,
        row: ApprovalRow,
        click: _Click,
        rights: Rights,
        deliveries: list[tuple[str, str]],
        forge: str,
        where: str,
        author_id: str | None,
    ) -> WebhookResult:
        row = self._expire_if_due(row)
        if row.status != PENDING:
            result = "expired" if row.status == "expired" else "already-decided"
            return self._consume(deliveries, WebhookResult(result, 200, request_id=row.request_id))
        rules = row.approver_rules()
        why = refusal(
            rules,
            click.clicker,
            approve=click.approve,
            requester_id=row.requester_id,
            author_id=author_id,
            rights=rights,
        )
        if why is None and click.approve and justification_required(rules):
            why = _missing_justification(row, click)
        if why is not None:
            return self._refuse(row, deliveries, why, click.clicker)
        by = f"{forge}:{click.clicker.login}"  # the login, for humans; the id is what counts
        by_id = f"{forge}:{click.clicker.user_id}"
        if not click.approve:
            return self._deny(row, (by, by_id), click, deliveries, where)
        vote = Vote(by_id, by, click.justification)
        try:
            tally = self.store.vote(
                row.request_id,
                vote,
                required_approvals(rules),
                lambda votes: self._sign_approval(row, votes, where),
                deliveries,
            )
        except Replayed:
            return WebhookResult("replayed", 409, "this delivery was already processed")
        return self._after_vote(row, tally, by, required_approvals(rules))

    def _deny(
        self,
        row: ApprovalRow,
        who: tuple[str, str],
        click: _Click,
        deliveries: list[tuple[str, str]],
        where: str,
    ) -> WebhookResult:
        by, by_id = who
        reason = f"denied in {where}" + (f": {click.justification}" if click.justification else "")
        decision = self._sign(
            row,
            approved=False,
            by=by,
            reason=reason,
            justification=click.justification,
            by_ids=(by_id,),
        )
        try:
            won = self.store.decide(row.request_id, "denied", decision, deliveries)
        except Replayed:
            return WebhookResult("replayed", 409, "this delivery was already processed")
        if not won:
            return WebhookResult("already-decided", 200, request_id=row.request_id)
        log.info("approval %s denied by %s", row.request_id, by)
        self.version += 1
        self._show_outcome(row, "denied", decision)
        return WebhookResult("denied", 200, request_id=row.request_id)

    def _after_vote(self, row: ApprovalRow, tally: Tally, by: str, needed: int) -> WebhookResult:
        if tally.status == "already-decided":
            return WebhookResult("already-decided", 200, request_id=row.request_id)
        if tally.decision is not None:
            log.info("approval %s approved by %s", row.request_id, tally.decision.by)
            self.version += 1
            self._show_outcome(row, "approved", tally.decision)
            return WebhookResult("approved", 200, request_id=row.request_id)
        count = f"{len(tally.votes)} of {needed} approvals"
        if not tally.counted:
            return WebhookResult("pending", 200, f"{by} already approved; {count}", row.request_id)
        log.info("approval %s: %s (%s)", row.request_id, count, by)
        self._show_progress(row, tally.votes, needed)
        return WebhookResult("pending", 200, count, row.request_id)

    def _sign_approval(self, row: ApprovalRow, votes: tuple[Vote, ...], where: str) -> Decision:
        ordered = sorted(votes, key=lambda v: (v.by.lower(), v.approver_id))
        by = ",".join(v.by for v in ordered)
        said = "; ".join(f"{v.by}: {v.justification}" for v in ordered if v.justification)
        reason = f"approved in {where}" + (f" ({said})" if said else "")
        return self._sign(
            row,
            approved=True,
            by=by,
            reason=reason,
            justification=said,
            by_ids=tuple(v.approver_id for v in ordered),
        )

    def _justification(self, text: str) -> str:
        if not text:
            return ""
        if self._masker is None:
            self._masker = Masker(MaskSettings())
        return self._masker.mask_text(text)[:MAX_JUSTIFICATION]

    def _refuse(
        self,
        row: ApprovalRow,
        deliveries: list[tuple[str, str]],
        why: str,
        clicker: Clicker | None = None,
    ) -> WebhookResult:
        log.info("approval %s: click refused: %s", row.request_id, why)
        result = self._consume(deliveries, WebhookResult("refused", 200, why, row.request_id))
        if clicker is not None and result.result == "refused" and _JUSTIFY in why:
            self._reply(row, f"@{clicker.login} {why}")
        return result

    def _consume(self, deliveries: list[tuple[str, str]], result: WebhookResult) -> WebhookResult:
        try:
            self.store.consume(deliveries)
        except Replayed:
            return WebhookResult("replayed", 409, "this delivery was already processed")
        return result

    def _sign(
        self,
        row: ApprovalRow,
        *,
        approved: bool,
        by: str,
        reason: str,
        justification: str = "",
        by_ids: tuple[str, ...] = (),
    ) -> Decision:
        return Decision.signed(
            self._broker.key,
            row.operation_hash,
            approved=approved,
            by=by,
            reason=reason,
            justification=justification,
            by_ids=by_ids,
        )

    def _show_outcome(self, row: ApprovalRow, status: str, decision: Decision) -> None:
        """Best effort: the decision stands even when the forge cannot be updated."""
        if row.forge_ref is None:
            return
        try:
            if row.backend == "github-check":
                body = outcome_body(
                    status,
                    by=decision.by,
                    at=decision.at,
                    reason=decision.reason,
                    operation_hash=row.operation_hash,
                )
                self.github().call(
                    "PATCH", f"/repos/{row.repository}/check-runs/{row.forge_ref}", body
                )
            elif row.backend == "gitlab" and row.target is not None:
                note = outcome_note(
                    row.request_id, status, decision.by, decision.at, decision.reason
                )
                self.gitlab().update_note(row.repository_id, row.target, int(row.forge_ref), note)
        except (AirlockError, ValueError) as exc:
            log.warning(
                "approval %s: could not show the outcome on the forge: %s", row.request_id, exc
            )

    def _show_progress(self, row: ApprovalRow, votes: tuple[Vote, ...], needed: int) -> None:
        """Best effort: "1 of 2 approvals" on the check run or the note while pending."""
        if row.forge_ref is None:
            return
        op = Operation(**row.operation)
        approvers = [v.by for v in votes]
        try:
            if row.backend == "github-check":
                body = progress_body(
                    request_id=row.request_id,
                    op=op,
                    requester=row.requester,
                    expires_at=row.expires_at,
                    approvers=approvers,
                    needed=needed,
                )
                self.github().call(
                    "PATCH", f"/repos/{row.repository}/check-runs/{row.forge_ref}", body
                )
            elif row.backend == "gitlab" and row.target is not None:
                note = progress_note(
                    row.request_id, op, row.requester, row.expires_at, approvers, needed
                )
                self.gitlab().update_note(row.repository_id, row.target, int(row.forge_ref), note)
        except (AirlockError, ValueError) as exc:
            log.warning(
                "approval %s: could not show progress on the forge: %s", row.request_id, exc
            )

    def _reply(self, row: ApprovalRow, text: str) -> None:
        """Best effort: answer on the merge request (GitLab only; check runs have no thread)."""
        if row.backend != "gitlab" or row.target is None:
            return
        try:
            self.gitlab().post_note(row.repository_id, row.target, text)
        except (AirlockError, ValueError) as exc:
            log.warning("approval %s: could not reply on the forge: %s", row.request_id, exc)

    def _job(self, job_token: str) -> tuple[str, dict[str, Any]]:
        digest = token_digest(job_token)
        subject = self._broker.store.job_subject(digest)
        if subject is None:
            raise PolicyDenied("unknown or expired job token")
        return digest, subject

    def github(self) -> GitHubApi:
        """The GitHub App client (built on first use)."""
        app = self._config.github_app
        if app is None:
            raise UsageError("this broker has no github_app configured")
        if self._github is None:
            pem = resolve_secret(app.private_key.get_secret_value(), "github_app private_key")
            self._github = GitHubApi.as_app(
                app.app_id, pem, app.installation_id, api_url=app.api_url
            )
        return self._github

    def gitlab(self) -> GitLabApi:
        """The GitLab client (built on first use)."""
        gl = self._config.gitlab
        if gl is None:
            raise UsageError("this broker has no gitlab section configured")
        if self._gitlab is None:
            token = resolve_secret(gl.token.get_secret_value(), "gitlab token")
            self._gitlab = GitLabApi(gl.url, private_token=token)
        return self._gitlab


_JUSTIFY = "a justification is required"


@dataclass(frozen=True)
class _Click:
    """One click or note: who, which way, and the (masked) justification if the forge has one."""

    clicker: Clicker
    approve: bool
    justification: str = ""


def _missing_justification(row: ApprovalRow, click: _Click) -> str | None:
    if click.justification:
        return None
    if row.backend != "gitlab":
        return f"{_JUSTIFY}, and {row.backend} cannot carry one: use the gitlab backend"
    return (
        f"{_JUSTIFY}: write `/airlock approve {row.request_id} <why>` "
        "(the text after the id is recorded with the decision)"
    )


def github_signature(secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub sends for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


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


def _pr_runs_commit(pr: Mapping[str, Any], job_sha: str) -> bool:
    """True when the job runs the pull request's head commit, or its test merge commit
    (``pull_request`` workflows check out ``refs/pull/N/merge``: GITHUB_SHA is that merge)."""
    if not job_sha:
        return False
    head = str((pr.get("head") or {}).get("sha") or "")
    merge = str(pr.get("merge_commit_sha") or "")
    return job_sha in (head, merge)


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


def _review(plans: list[ApprovalRow], run_id: str) -> tuple[str, str]:
    if not plans:
        return (
            "rejected",
            f"Airlock: no pending plan was registered for run {run_id}; nothing to apply",
        )
    hashes = ", ".join(p.operation_hash[:16] for p in plans)
    return (
        "approved",
        f"Airlock: plan {hashes} recorded by run {run_id} (hash-bound; applied as is)",
    )


def _replace(row: ApprovalRow, **changes: Any) -> ApprovalRow:
    return ApprovalRow(**{**row.__dict__, **changes})


def _url_path(url: str) -> str:
    from urllib.parse import urlsplit

    try:
        path = urlsplit(url).path
    except ValueError:  # e.g. "http://[": not a URL, so not a review URL
        return ""
    return path.removeprefix("/api/v3")


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise UsageError("the webhook body is not JSON") from None
    if not isinstance(data, dict):
        raise UsageError("the webhook body is not a JSON object")
    return data
