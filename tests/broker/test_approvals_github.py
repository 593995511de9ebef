"""Broker approvals with GitHub: check runs, clicks, and every attack on them, over real sockets."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from tests.broker import approvals_support
from tests.broker.approvals_support import (
    RUN_ID,
    SHA,
    FakeGitHub,
    FakeGitLab,
    WebhookSchemas,
    add_job,
    build_broker,
    check_run_click,
    deployment_rule,
    github_headers,
    github_subject,
    post,
    user_id_of,
)
from tests.support.broker_server import BrokerServer
from tests.support.oidc_issuer import OIDCIssuer

from airlock.broker.app import create_app
from airlock.broker.service import Broker
from airlock.gate import Decision, Operation
from airlock.gate.broker import decision_from_status

forges = approvals_support.forges
github_openapi = approvals_support.github_openapi
webhook_schemas = approvals_support.webhook_schemas


@dataclass
class Stack:
    broker: Broker
    url: str
    github: FakeGitHub
    gitlab: FakeGitLab
    schemas: WebhookSchemas

    def create(self, token: str, **overrides: Any) -> httpx.Response:
        body: dict[str, Any] = {
            "backend": "github-check",
            "operation": _op().to_dict(),
            "timeout": 600,
            "pull_request": 12,
            **overrides,
        }
        return httpx.post(f"{self.url}/v1/approvals", json=body, headers=_auth(token), timeout=30)

    def status(self, token: str, request_id: str, wait: float = 0) -> httpx.Response:
        return httpx.get(
            f"{self.url}/v1/approvals/{request_id}?wait={wait}", headers=_auth(token), timeout=90
        )

    def click(
        self, created: dict[str, Any], login: str, *, approve: bool = True, **kw: Any
    ) -> httpx.Response:
        run_id = int(created["url"].rsplit("/", 1)[-1])
        check = self.github.check_runs[run_id]
        identifier = check["actions"][0 if approve else 1]["identifier"]
        delivery = kw.pop("delivery", None)
        secret = kw.pop("secret", None)
        identifier = kw.pop("identifier", identifier)
        payload = check_run_click(
            self.schemas,
            check_run_id=run_id,
            external_id=created["request_id"],
            identifier=identifier,
            login=login,
            **kw,
        )
        raw = json.dumps(payload).encode()
        headers = github_headers(raw, event="check_run", delivery=delivery)
        if secret is not None:
            headers = github_headers(raw, event="check_run", delivery=delivery, secret=secret)
        return post(f"{self.url}/v1/webhooks/github", raw, headers)


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _op(text: str = "DROP TABLE users", **kw: Any) -> Operation:
    fields: dict[str, Any] = {
        "kind": "sql",
        "text": text,
        "rule_id": "no-drop",
        "gateway": "appdb",
        "repository": "acme/api",
        "commit": SHA,
        "run_id": RUN_ID,
        "session_id": "s-1",
        **kw,
    }
    return Operation(**fields)


def _stack(
    issuer: OIDCIssuer,
    tmp_path: Path,
    forges: tuple[FakeGitHub, FakeGitLab],
    schemas: WebhookSchemas,
    approvers: str = "{}",
) -> Iterator[Stack]:
    broker, store = build_broker(
        issuer.url, f"sqlite:///{tmp_path / 'broker.db'}", approvers=approvers
    )
    github, gitlab = forges
    github.add_pull(12, author="pr-author")
    github.permissions.update(
        {
            "alice": "write",
            "octocat": "admin",
            "pr-author": "write",
            "reader": "read",
            "deploy-bot[bot]": "admin",
            "dana": "maintain",
        }
    )
    try:
        with BrokerServer(create_app(broker)) as server:
            yield Stack(broker, server.url, github, gitlab, schemas)
    finally:
        broker.close()
        store.close()


@pytest.fixture
def stack(
    issuer: OIDCIssuer,
    tmp_path: Path,
    forges: tuple[FakeGitHub, FakeGitLab],
    webhook_schemas: WebhookSchemas,
) -> Iterator[Stack]:
    yield from _stack(issuer, tmp_path, forges, webhook_schemas)


def _broker_key(stack: Stack) -> Any:
    (entry,) = stack.broker.public_keys()
    return load_pem_public_key(entry["public_pem"].encode())


def _decision(body: dict[str, Any]) -> Decision:
    decision = decision_from_status(body)
    assert decision is not None
    return decision


def test_check_run_is_posted_on_the_head_sha_with_buttons_and_the_operation(stack: Stack) -> None:
    token = add_job(stack.broker, github_subject())
    created = stack.create(token, operation=_op("DROP TABLE users -- ***").to_dict()).json()
    assert created["status"] == "pending"
    assert created["operation_hash"] == _op("DROP TABLE users -- ***").operation_hash()
    (check,) = stack.github.check_runs.values()
    assert check["name"] == "Airlock approval: DROP TABLE users -- ***"
    assert (
        check["head_sha"] == "ec26c3e57ca3a959ca5aad62de7213c562f8c821"
    )  # the PR head, asked of GitHub
    assert (check["status"], check["conclusion"]) == ("completed", "action_required")
    assert check["external_id"] == created["request_id"]
    actions = check["actions"]
    assert [a["label"] for a in actions] == ["Approve", "Deny"] and len(actions) <= 3
    assert all(
        len(a["label"]) <= 20 and len(a["description"]) <= 40 and len(a["identifier"]) <= 20
        for a in actions
    )
    assert all(created["operation_hash"][:12] in a["identifier"] for a in actions)
    summary = check["output"]["summary"]
    for expected in (
        "`octocat`",
        "`no-drop`",
        "Expires",
        created["operation_hash"],
        "DROP TABLE users -- ***",
    ):
        assert expected in summary
    assert check["details_url"] == "https://github.com/acme/api/pull/12"
    assert stack.github.errors == []


def test_an_entitled_click_decides_once_signed_and_the_check_run_shows_it(stack: Stack) -> None:
    token = add_job(stack.broker, github_subject())
    created = stack.create(token).json()
    waited: dict[str, Any] = {}

    def waiter() -> None:
        started = time.monotonic()
        waited.update(stack.status(token, created["request_id"], wait=20).json())
        waited["took"] = time.monotonic() - started

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.3)
    response = stack.click(created, "alice")
    thread.join(timeout=30)
    assert response.status_code == 200 and response.json()["result"] == "approved"
    assert waited["status"] == "approved" and waited["by"] == "github:alice"
    assert waited["took"] < 5  # woken by the click, not by the end of the long-poll
    assert _decision(waited).verify(_broker_key(stack), created["operation_hash"])
    (check,) = stack.github.check_runs.values()
    assert check["conclusion"] == "success" and check["actions"] == []
    assert "alice" in check["output"]["title"]
    assert stack.github.errors == []


def test_deny_button_denies(stack: Stack) -> None:
    token = add_job(stack.broker, github_subject())
    created = stack.create(token).json()
    assert stack.click(created, "alice", approve=False).json()["result"] == "denied"
    body = stack.status(token, created["request_id"]).json()
    assert body["status"] == "denied"
    (check,) = stack.github.check_runs.values()
    assert check["conclusion"] == "failure"


def test_forged_signature_is_refused_and_changes_nothing(stack: Stack) -> None:
    token = add_job(stack.broker, github_subject())
    created = stack.create(token).json()
    response = stack.click(created, "alice", secret="not-the-secret")
    assert response.status_code == 401
    assert stack.status(token, created["request_id"]).json()["status"] == "pending"


def test_replayed_delivery_is_refused_and_changes_nothing(stack: Stack) -> None:
    token = add_job(stack.broker, github_subject())
    created = stack.create(token).json()
    first = stack.click(created, "reader", delivery="d-1")
    assert first.json()["result"] == "refused"
    replay = stack.click(created, "alice", delivery="d-1")
    assert replay.status_code == 409
    assert stack.status(token, created["request_id"]).json()["status"] == "pending"


@pytest.mark.parametrize(
    ("login", "kw", "why"),
    [
        ("octocat", {}, "asked for this operation"),
        ("pr-author", {}, "wrote the pull/merge request"),
        ("reader", {}, "lacks write permission"),
        ("stranger", {}, "lacks write permission"),
        ("deploy-bot[bot]", {"user_type": "Bot"}, "is a bot"),
        ("alice", {"user_type": "Bot"}, "is a bot"),
    ],
)
def test_clicks_that_must_not_approve(
    stack: Stack, login: str, kw: dict[str, Any], why: str
) -> None:
    token = add_job(stack.broker, github_subject())
    created = stack.create(token).json()
    response = stack.click(created, login, **kw)
    assert response.status_code == 200
    assert response.json()["result"] == "refused" and why in response.json()["reason"]
    assert stack.status(token, created["request_id"]).json()["status"] == "pending"
    (check,) = stack.github.check_runs.values()
    assert check["conclusion"] == "action_required"


@pytest.mark.parametrize(
    ("login", "who", "why"),
    [
        ("octocat-renamed", "octocat", "asked for this operation"),
        ("OctoCat", "octocat", "asked for this operation"),
        ("pr-author-renamed", "pr-author", "wrote the pull/merge request"),
        ("PR-Author", "pr-author", "wrote the pull/merge request"),
    ],
)
def test_a_renamed_requester_or_author_cannot_approve(
    stack: Stack, login: str, who: str, why: str
) -> None:
    """The click carries the same immutable id under another login: still the same person."""
    stack.github.permissions[login.lower()] = "admin"
    token = add_job(stack.broker, github_subject())
    created = stack.create(token).json()
    response = stack.click(created, login, user_id=user_id_of(who))
    assert response.json()["result"] == "refused" and why in response.json()["reason"]
    assert stack.status(token, created["request_id"]).json()["status"] == "pending"


def test_the_requesters_old_login_taken_by_someone_else_may_approve(stack: Stack) -> None:
    stack.github.owners["octocat"] = user_id_of("someone-else")  # GitHub says so too
    token = add_job(stack.broker, github_subject())
    created = stack.create(token).json()
    response = stack.click(created, "octocat", user_id=user_id_of("someone-else"))
    assert response.json()["result"] == "approved"
    body = stack.status(token, created["request_id"]).json()
    assert body["by"] == "github:octocat"  # the login, for humans
    assert body["by_ids"] == [f"github:{user_id_of('someone-else')}"]  # the id, signed
    assert _decision(body).verify(_broker_key(stack), created["operation_hash"])


def test_a_check_run_is_posted_only_on_a_pull_request_at_the_jobs_commit(stack: Stack) -> None:
    stack.github.add_pull(13, author="pr-author", merge_sha="0" * 40)  # another commit
    token = add_job(stack.broker, github_subject())
    response = stack.create(token, pull_request=13)
    assert response.status_code == 403 and "not at this job's commit" in response.text
    assert stack.github.check_runs == {}


def test_a_click_on_a_check_run_for_another_head_is_ignored(stack: Stack) -> None:
    token = add_job(stack.broker, github_subject())
    created = stack.create(token).json()
    response = stack.click(created, "alice", head_sha="1" * 40)
    assert response.status_code == 202 and response.json()["result"] == "ignored"
    assert stack.status(token, created["request_id"]).json()["status"] == "pending"


def test_a_button_for_another_operation_hash_is_refused(stack: Stack) -> None:
    token = add_job(stack.broker, github_subject())
    created = stack.create(token).json()
    other = _op("DROP TABLE invoices").operation_hash()
    response = stack.click(created, "alice", identifier=f"approve-{other[:12]}")
    assert (
        response.json()["result"] == "refused" and "another operation" in response.json()["reason"]
    )
    assert stack.status(token, created["request_id"]).json()["status"] == "pending"


def test_unanswered_request_expires_to_denied_and_late_clicks_do_nothing(stack: Stack) -> None:
    token = add_job(stack.broker, github_subject())
    created = stack.create(token, timeout=0.5).json()
    time.sleep(0.7)
    late = stack.click(created, "alice")
    assert late.json()["result"] == "expired"
    body = stack.status(token, created["request_id"]).json()
    assert body["status"] == "expired" and body["reason"] == "expired" and body["by"] == "airlock"
    assert _decision({**body, "status": "denied"}).verify(
        _broker_key(stack), created["operation_hash"]
    )
    (check,) = stack.github.check_runs.values()
    assert check["conclusion"] == "timed_out"


def test_two_clicks_racing_make_exactly_one_decision(stack: Stack) -> None:
    token = add_job(stack.broker, github_subject())
    created = stack.create(token).json()
    stack.github.permissions.update({f"user{i}": "write" for i in range(8)})
    results: list[str] = []
    barrier = threading.Barrier(8)

    def click(i: int) -> None:
        barrier.wait()
        results.append(stack.click(created, f"user{i}", approve=i % 2 == 0).json()["result"])

    threads = [threading.Thread(target=click, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    decided = [r for r in results if r in ("approved", "denied")]
    assert len(results) == 8 and len(decided) == 1
    assert results.count("already-decided") == 7
    body = stack.status(token, created["request_id"]).json()
    assert body["status"] == decided[0]
    patches = [c for c in stack.github.calls if c[0] == "PATCH"]
    assert len(patches) == 1


def test_malformed_webhook_bodies_get_4xx_and_change_nothing(stack: Stack) -> None:
    token = add_job(stack.broker, github_subject())
    created = stack.create(token).json()
    url = f"{stack.url}/v1/webhooks/github"
    for raw in (
        b"not json",
        b"[1,2]",
        json.dumps({"action": "requested_action", "check_run": {}}).encode(),
    ):
        response = post(url, raw, github_headers(raw, event="check_run"))
        assert 400 <= response.status_code < 500, raw
    no_delivery = github_headers(b"{}", event="check_run")
    del no_delivery["X-GitHub-Delivery"]
    assert post(url, b"{}", no_delivery).status_code == 400
    assert stack.status(token, created["request_id"]).json()["status"] == "pending"


def test_a_job_can_only_ask_about_its_own_repository_run_and_requests(stack: Stack) -> None:
    token = add_job(stack.broker, github_subject())
    assert stack.create(token, operation=_op(repository="acme/other").to_dict()).status_code == 403
    assert stack.create(token, operation=_op(run_id="1").to_dict()).status_code == 403
    assert stack.create("not-a-job-token").status_code == 403
    created = stack.create(token).json()
    other_job = add_job(stack.broker, github_subject(run_id="999"))
    assert stack.status(other_job, created["request_id"]).status_code == 403
    assert stack.github.check_runs  # only the legitimate request was posted
    assert len(stack.github.check_runs) == 1


def test_bad_create_bodies_get_4xx(stack: Stack) -> None:
    token = add_job(stack.broker, github_subject())
    url = f"{stack.url}/v1/approvals"
    for body in (
        {},
        {"backend": "github-check"},
        {"backend": "smoke-signals", "operation": _op().to_dict(), "timeout": 5},
    ):
        assert httpx.post(url, json=body, headers=_auth(token)).status_code == 400
    assert stack.create(token, pull_request=None).status_code == 400
    assert stack.create(token, timeout=-1).status_code == 400
    assert stack.status(token, "0" * 32, wait=500).status_code == 400


def test_github_refusing_the_check_run_fails_the_request_closed(stack: Stack) -> None:
    token = add_job(stack.broker, github_subject())
    stack.github.fail_check_runs = True
    response = stack.create(token)
    assert response.status_code == 503
    assert "GitHub refused POST" in response.json()["message"]


@pytest.fixture
def team_stack(
    issuer: OIDCIssuer,
    tmp_path: Path,
    forges: tuple[FakeGitHub, FakeGitLab],
    webhook_schemas: WebhookSchemas,
) -> Iterator[Stack]:
    approvers = "{teams: [acme/dba], users: [dana], allow_author: true}"
    yield from _stack(issuer, tmp_path, forges, webhook_schemas, approvers)


def test_named_teams_and_users_are_ored_and_checked_at_click_time(team_stack: Stack) -> None:
    stack = team_stack
    stack.github.teams["acme/dba"] = {"bob"}
    stack.github.permissions["bob"] = "write"
    token = add_job(stack.broker, github_subject())
    created = stack.create(token).json()
    assert stack.click(created, "alice").json()["result"] == "refused"  # write, but not named
    stack.github.teams["acme/dba"].add("alice")  # joins the team: rights are read at click time
    assert stack.click(created, "alice").json()["result"] == "approved"
    second = stack.create(token).json()
    assert stack.click(second, "dana").json()["result"] == "approved"  # a named user
    third = stack.create(token).json()
    assert (
        stack.click(third, "pr-author").json()["result"] == "refused"
    )  # allowed author, not named
    assert stack.github.errors == []


def test_the_session_can_narrow_but_not_widen_the_brokers_approvers(stack: Stack) -> None:
    token = add_job(stack.broker, github_subject())
    wider = stack.create(
        token, approvers={"allow_self": True, "allow_author": True, "permission": "read"}
    ).json()
    assert stack.click(wider, "octocat").json()["result"] == "refused"  # broker: never self
    assert stack.click(wider, "reader").json()["result"] == "refused"  # broker: at least write
    narrower = stack.create(token, approvers={"permission": "maintain"}).json()
    assert stack.click(narrower, "alice").json()["result"] == "refused"
    assert stack.click(narrower, "dana").json()["result"] == "approved"


def test_deployment_protection_rule_is_answered_through_the_review_api(stack: Stack) -> None:
    token = add_job(stack.broker, github_subject())
    plan = _op("apply plan 3f2a… (2 operations)", kind="command", rule_id="plan", gateway=None)
    created = stack.create(
        token, backend="github-environment", operation=plan.to_dict(), pull_request=None
    ).json()
    raw = json.dumps(deployment_rule(stack.schemas)).encode()
    url = f"{stack.url}/v1/webhooks/github"
    response = post(
        url, raw, github_headers(raw, event="deployment_protection_rule", delivery="dep-1")
    )
    assert response.json().get("result") == "approved", response.text
    (review,) = stack.github.reviews
    assert review["state"] == "approved" and review["environment_name"] == "production"
    assert created["operation_hash"][:16] in review["comment"]
    assert stack.status(token, created["request_id"]).json()["status"] == "approved"
    assert (
        post(
            url, raw, github_headers(raw, event="deployment_protection_rule", delivery="dep-1")
        ).status_code
        == 409
    )
    other_run = json.dumps(deployment_rule(stack.schemas, run_id="777")).encode()
    post(url, other_run, github_headers(other_run, event="deployment_protection_rule"))
    assert (
        stack.github.reviews[-1]["state"] == "rejected"
        and stack.github.reviews[-1]["run_id"] == "777"
    )
    unguarded = json.dumps(deployment_rule(stack.schemas, environment="staging")).encode()
    ignored = post(url, unguarded, github_headers(unguarded, event="deployment_protection_rule"))
    assert ignored.status_code == 202 and len(stack.github.reviews) == 2
    assert stack.github.errors == []


def test_ping_and_other_events_are_acknowledged_without_effect(stack: Stack) -> None:
    url = f"{stack.url}/v1/webhooks/github"
    raw = b'{"zen": "Keep it logically awesome."}'
    assert post(url, raw, github_headers(raw, event="ping")).json()["result"] == "pong"
    assert post(url, raw, github_headers(raw, event="push")).status_code == 202
