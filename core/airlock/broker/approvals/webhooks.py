"""GitHub and GitLab webhooks: verify the delivery, find the request it answers, hand the click
to the :class:`~airlock.broker.approvals.decide.Decider`; GitHub deployment protection rules
are answered here too (a flow of their own: the review API, not a click)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from airlock.broker.approvals.bodies import DeploymentRuleEvent, GhInstallation
from airlock.broker.approvals.decide import Decider, WebhookResult
from airlock.broker.approvals.forges import ForgeDispatch, shown
from airlock.broker.approvals.store import PENDING, ApprovalRow, Replayed
from airlock.errors import UsageError
from airlock.gate.forges import Forge
from airlock.gate.interface import GateError
from airlock.policy.broker_config import ApprovalsConfig
from airlock.providers.secrets import resolve_secret

__all__ = ["Webhooks", "github_signature"]

log = logging.getLogger("airlock.broker.approvals")

_CALLBACK = re.compile(
    r"^/repos/([A-Za-z0-9-]+/[A-Za-z0-9._-]+)/actions/runs/(\d+)/deployment_protection_rule$"
)


def github_signature(secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub sends for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Webhooks:
    """The two webhook endpoints' logic."""

    def __init__(self, config: ApprovalsConfig, decider: Decider, forges: ForgeDispatch) -> None:
        self._config = config
        self._decider = decider
        self._forges = forges
        self._store = decider.store

    def github(self, headers: Mapping[str, str], raw: bytes) -> WebhookResult:
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
            return self._answer(self._forges.forge("github-check"), payload, delivery)
        if event == "deployment_protection_rule" and payload.get("action") == "requested":
            return self._deployment_rule(DeploymentRuleEvent.model_validate(payload), delivery)
        return WebhookResult("ignored", 202)

    def gitlab(self, headers: Mapping[str, str], raw: bytes) -> WebhookResult:
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
        return self._answer(self._forges.forge("gitlab"), _json_object(raw), delivery)

    def _answer(self, forge: Forge, payload: Mapping[str, Any], delivery: str) -> WebhookResult:
        """Apply the answer in a verified webhook ``payload`` to the request it names."""
        click = forge.click(payload, delivery)
        if click is None:
            return WebhookResult("ignored", 202)
        row = self._store.get(click.request_id) if click.request_id else None
        if row is None or row.backend != forge.name:
            return WebhookResult("ignored", 202, f"not an Airlock request shown in {click.where}")
        if not forge.matches(click, shown(row), row.head_sha):
            return WebhookResult("ignored", 202, f"not an Airlock request shown in {click.where}")
        if click.hash_prefix is not None:
            if not click.hash_prefix:
                return WebhookResult("bad-request", 400, "unknown requested action")
            if not row.operation_hash.startswith(click.hash_prefix):
                deliveries = list(click.deliveries)
                return self._decider.refuse(row, deliveries, "the button was for another operation")
        author_id = forge.author_id(shown(row)) if click.approve else None
        return self._decider.click(row, click, forge, author_id)

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
            self._store.consume([("github", delivery)])
        except Replayed:
            return WebhookResult("replayed", 409, "this delivery was already processed")
        plans = [
            self._decider.expire_if_due(r)
            for r in self._store.pending_plans(str(event.repository.id), run_id)
        ]
        plans = [p for p in plans if p.status == PENDING]
        state, comment = _review(plans, run_id)
        try:
            self._forges.github().call(
                "POST",
                f"/repos/{repo}/actions/runs/{run_id}/deployment_protection_rule",
                {"environment_name": event.environment, "state": state, "comment": comment},
            )
        except GateError:
            self._store.release([("github", delivery)])  # GitHub's redelivery may try again
            raise
        for plan in plans:
            decision = self._decider.sign(
                plan, approved=True, by=f"github-environment:{event.environment}", reason=comment
            )
            self._store.decide(plan.request_id, "approved", decision, [])
        self._decider.version += 1
        return WebhookResult(state)

    def _our_installation(self, installation: GhInstallation | None) -> bool:
        app = self._config.github_app
        if app is None or installation is None:
            return False  # no installation named: not a delivery for our App
        return installation.id == app.installation_id


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


def _url_path(url: str) -> str:
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
