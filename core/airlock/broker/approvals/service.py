"""The approval service: create, status, and the decisions that webhooks bring."""

from __future__ import annotations

import dataclasses
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

from airlock.broker.approvals.bodies import CreateBody, DeploymentRuleEvent, GhInstallation
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
from airlock.gate.forges import Click, Forge, ForgeRequest, Shown
from airlock.gate.forges.github_check import GitHubCheckForge
from airlock.gate.forges.gitlab_notes import GitLabNotesForge
from airlock.gate.github_api import GitHubApi
from airlock.gate.gitlab import GitLabApi
from airlock.gate.interface import Decision, GateError, Operation
from airlock.gate.rules import (
    MAX_JUSTIFICATION,
    ApproverRules,
    Clicker,
    justification_required,
    refusal,
    required_approvals,
)
from airlock.mask import Masker, MaskSettings
from airlock.policy.broker_config import ApprovalsConfig
from airlock.providers.secrets import resolve_secret

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
        self._forges: dict[str, Forge] = {}
        self._masker: Masker | None = None
        self.version = 0  # bumped on every local decision: wakes long-polls early
        broker.on_revoke.append(self.job_revoked)

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
        if not _carries_text(body.backend) and justification_required(
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
        forge = self.forge(row.backend)
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
            self._close_unposted(row)
            raise
        self.store.set_forge(row.request_id, ref.ref, ref.url, ref.head_sha, ref.author)
        return row

    def _close_unposted(self, row: ApprovalRow) -> None:
        decision = self._sign(row, approved=False, by="airlock", reason="could not be posted")
        self.store.decide(row.request_id, "denied", decision, [])

    def job_revoked(self, job_digest: str) -> None:
        """Deny every pending request of a revoked job (a click after this changes nothing)."""
        for row in self.store.pending_of_job(job_digest):
            decision = self._sign(row, approved=False, by="airlock", reason="job revoked")
            if self.store.decide(row.request_id, "denied", decision, []):
                log.info("approval %s denied: its job was revoked", row.request_id)
                self._show_outcome(row, "denied", decision)
        self.version += 1

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
        if event == "check_run":
            return self._answer(self.forge("github-check"), payload, delivery)
        if event == "deployment_protection_rule" and payload.get("action") == "requested":
            return self._deployment_rule(DeploymentRuleEvent.model_validate(payload), delivery)
        return WebhookResult("ignored", 202)

    def _answer(self, forge: Forge, payload: Mapping[str, Any], delivery: str) -> WebhookResult:
        """Apply the answer in a verified webhook ``payload`` to the request it names."""
        click = forge.click(payload, delivery)
        if click is None:
            return WebhookResult("ignored", 202)
        row = self.store.get(click.request_id) if click.request_id else None
        if row is None or row.backend != forge.name:
            return WebhookResult("ignored", 202, f"not an Airlock request shown in {click.where}")
        shown = _shown(row)
        if not forge.matches(click, shown, row.head_sha):
            return WebhookResult("ignored", 202, f"not an Airlock request shown in {click.where}")
        deliveries = list(click.deliveries)
        if click.hash_prefix is not None:
            if not click.hash_prefix:
                return WebhookResult("bad-request", 400, "unknown requested action")
            if not row.operation_hash.startswith(click.hash_prefix):
                return self._refuse(row, deliveries, "the button was for another operation")
        click = dataclasses.replace(click, justification=self._justification(click.justification))
        author_id = forge.author_id(shown) if click.approve else None
        return self._click(row, click, forge, author_id)

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
        return (
            app is not None and installation is not None and installation.id == app.installation_id
        )

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
        return self._answer(self.forge("gitlab"), _json_object(raw), delivery)

    # -- shared -----------------------------------------------------------------------------------

    def _click(
        self, row: ApprovalRow, click: Click, forge: Forge, author_id: str | None
    ) -> WebhookResult:
        deliveries, where = list(click.deliveries), click.where
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
            rights=forge.rights(_shown(row)),
        )
        if why is None and click.approve and justification_required(rules):
            why = _missing_justification(row, click, forge)
        if why is not None:
            return self._refuse(row, deliveries, why, click.clicker)
        by = f"{forge.source}:{click.clicker.login}"  # for humans; the id is what counts
        by_id = f"{forge.source}:{click.clicker.user_id}"
        if not click.approve:
            return self._deny(row, (by, by_id), click, deliveries, where)
        self._drop_stale_votes(row, rules, forge, author_id, by_id)
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

    def _drop_stale_votes(
        self,
        row: ApprovalRow,
        rules: list[ApproverRules],
        forge: Forge,
        author_id: str | None,
        voter: str,
    ) -> None:
        """Before a vote that may settle the request, ask again whether each earlier approver
        may still approve (rights are checked at click time: theirs may have been removed
        since); drop the votes of those who may not."""
        votes = [v for v in self.store.votes(row.request_id) if v.approver_id != voter]
        if len(votes) + 1 < required_approvals(rules):
            return
        rights = forge.rights(_shown(row))
        for vote in votes:
            clicker = Clicker(vote.by.partition(":")[2], vote.approver_id.partition(":")[2])
            why = refusal(
                rules,
                clicker,
                approve=True,
                requester_id=row.requester_id,
                author_id=author_id,
                rights=rights,
            )
            if why is not None:
                log.info("approval %s: earlier vote dropped: %s", row.request_id, why)
                self.store.drop_vote(row.request_id, vote.approver_id)

    def _deny(
        self,
        row: ApprovalRow,
        who: tuple[str, str],
        click: Click,
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
        if tally.status == "revoked":
            why = "the job that asked was revoked"
            log.info("approval %s: click refused: %s", row.request_id, why)
            return WebhookResult("refused", 200, why, row.request_id)
        if tally.decision is not None:
            log.info(
                "approval %s approved by %s (ids %s)%s",
                row.request_id,
                tally.decision.by,
                ",".join(tally.decision.by_ids),
                " with a justification" if tally.decision.justification else "",
            )
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
        if row.forge_ref is None or row.backend not in FORGES:
            return
        try:
            self.forge(row.backend).show_outcome(_shown(row), status, decision)
        except (AirlockError, ValueError) as exc:
            log.warning(
                "approval %s: could not show the outcome on the forge: %s", row.request_id, exc
            )

    def _show_progress(self, row: ApprovalRow, votes: tuple[Vote, ...], needed: int) -> None:
        """Best effort: "1 of 2 approvals" on the check run or the note while pending."""
        if row.forge_ref is None or row.backend not in FORGES:
            return
        try:
            self.forge(row.backend).show_progress(_shown(row), [v.by for v in votes], needed)
        except (AirlockError, ValueError) as exc:
            log.warning(
                "approval %s: could not show progress on the forge: %s", row.request_id, exc
            )

    def _reply(self, row: ApprovalRow, text: str) -> None:
        """Best effort: answer on the forge's thread, where it has one."""
        if row.backend not in FORGES:
            return
        try:
            self.forge(row.backend).reply(_shown(row), text)
        except (AirlockError, ValueError) as exc:
            log.warning("approval %s: could not reply on the forge: %s", row.request_id, exc)

    def _job(self, job_token: str) -> tuple[str, dict[str, Any]]:
        digest = token_digest(job_token)
        subject = self._broker.store.job_subject(digest)
        if subject is None:
            raise PolicyDenied("unknown or expired job token")
        return digest, subject

    def forge(self, backend: str) -> Forge:
        """The forge that shows ``backend``'s requests (built on first use)."""
        if backend not in self._forges:
            if backend == GitHubCheckForge.name:
                app = self._config.github_app
                if app is None:
                    raise UsageError("this broker has no github_app configured")
                self._forges[backend] = GitHubCheckForge(self.github, app.installation_id)
            elif backend == GitLabNotesForge.name:
                self._forges[backend] = GitLabNotesForge(self.gitlab)
            else:
                raise UsageError(f"no forge shows {backend!r} requests")
        return self._forges[backend]

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


def _missing_justification(row: ApprovalRow, click: Click, forge: Forge) -> str | None:
    if click.justification:
        return None
    if not forge.carries_text:
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


FORGES: dict[str, type[Forge]] = {f.name: f for f in (GitHubCheckForge, GitLabNotesForge)}


def _carries_text(backend: str) -> bool:
    forge = FORGES.get(backend)
    return forge is not None and forge.carries_text


def _shown(row: ApprovalRow) -> Shown:
    return Shown(
        row.request_id,
        Operation(**row.operation),
        row.repository,
        row.repository_id,
        row.target,
        row.requester,
        row.expires_at,
        row.forge_ref,
    )


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
