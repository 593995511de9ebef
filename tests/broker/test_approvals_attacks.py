"""Approval attacks the first review did not name, over real sockets (uvicorn broker, fake
forges validated against GitHub's OpenAPI description and GitLab's published types).

Rights by login (a login changes hands between click and lookup), webhooks without our App's
installation, GitLab notes edited into an approval, confusable logins in ``users:``, one person
counted twice, replayed deliveries in a quorum, and a click racing a revoke.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.broker import approvals_support
from tests.broker.approvals_support import (
    INSTALLATION,
    FakeGitHub,
    FakeGitLab,
    WebhookSchemas,
    add_job,
    check_run_click,
    deployment_rule,
    github_headers,
    github_subject,
    gitlab_subject,
    post,
    user_id_of,
)
from tests.broker.test_approvals_github import Stack, _stack
from tests.broker.test_approvals_gitlab import DEVELOPER, MAINTAINER
from tests.broker.test_approvals_gitlab import Stack as GitLabStack
from tests.support.broker_server import BrokerServer
from tests.support.oidc_issuer import OIDCIssuer

from airlock.broker.app import create_app
from airlock.broker.approvals.store import APPROVALS, ApprovalStore
from airlock.errors import ConfigError
from airlock.gate.github_api import GitHubApi
from airlock.gate.rules import Clicker
from airlock.policy.broker_config import parse_broker_config

forges = approvals_support.forges
github_openapi = approvals_support.github_openapi
webhook_schemas = approvals_support.webhook_schemas


def _fixture(approvers: str) -> Any:
    @pytest.fixture
    def made(
        issuer: OIDCIssuer,
        tmp_path: Path,
        forges: tuple[FakeGitHub, FakeGitLab],
        webhook_schemas: WebhookSchemas,
    ) -> Iterator[Stack]:
        yield from _stack(issuer, tmp_path, forges, webhook_schemas, approvers)

    return made


stack = _fixture("{}")
named_stack = _fixture("{users: [kevin, 'id:777001'], allow_author: true}")
quorum_stack = _fixture("{min_approvals: 2}")


@pytest.fixture
def gl_stack(
    issuer: OIDCIssuer, tmp_path: Path, forges: tuple[FakeGitHub, FakeGitLab]
) -> Iterator[GitLabStack]:
    broker, store = approvals_support.build_broker(
        issuer.url, f"sqlite:///{tmp_path / 'broker.db'}"
    )
    gitlab = forges[1]
    gitlab.levels.update({11: DEVELOPER, 3: MAINTAINER, 1: MAINTAINER})
    try:
        with BrokerServer(create_app(broker)) as server:
            yield GitLabStack(broker, server.url, gitlab)
    finally:
        broker.close()
        store.close()


def _status(stack: Stack, token: str, request_id: str) -> str:
    return str(stack.status(token, request_id).json()["status"])


def _send_click(stack: Stack, payload: dict[str, Any], delivery: str | None = None) -> Any:
    raw = json.dumps(payload).encode()
    headers = github_headers(raw, event="check_run", delivery=delivery)
    return post(f"{stack.url}/v1/webhooks/github", raw, headers)


def _approve_payload(stack: Stack, created: dict[str, Any], login: str, **kw: Any) -> Any:
    run_id = int(created["url"].rsplit("/", 1)[-1])
    return check_run_click(
        stack.schemas,
        check_run_id=run_id,
        external_id=created["request_id"],
        identifier=stack.github.created_actions[run_id][0]["identifier"],  # as first posted
        login=login,
        **kw,
    )


# -- rights by id, not by login -------------------------------------------------------------------


def test_rights_follow_the_clickers_id_when_a_login_changes_hands(stack: Stack) -> None:
    """The requester's second account (no rights) clicks as ``octo-alt``; before the broker
    asks GitHub, that login has moved to the requester's main account (admin). Asked by login
    alone, the click would approve the requester's own operation with the admin's rights."""
    stack.github.permissions["octo-alt"] = "admin"
    stack.github.owners["octo-alt"] = user_id_of("octocat")  # GitHub: now octocat's login
    token = add_job(stack.broker, github_subject())
    created = stack.create(token).json()
    response = stack.click(created, "octo-alt", user_id=user_id_of("octocat-second-account"))
    assert response.json()["result"] == "refused"
    assert "lacks write permission" in response.json()["reason"]
    assert _status(stack, token, created["request_id"]) == "pending"


def test_team_membership_is_decided_by_id(forges: tuple[FakeGitHub, FakeGitLab]) -> None:
    github = forges[0]
    github.teams["acme/dba"] = {"bob"}
    api = GitHubApi.with_token("ghs_" + "t" * 36)
    try:
        assert api.in_team("acme/dba", Clicker("bob", str(user_id_of("bob"))))
        # The login "bob" in a click by another account is not bob's membership.
        assert not api.in_team("acme/dba", Clicker("bob", str(user_id_of("mallory"))))
        assert not api.in_team("acme/dba", Clicker("bob", ""))
    finally:
        api.close()
    assert ("GET", "/orgs/acme/teams/dba/members", None) in github.calls


# -- our installation, our repository ---------------------------------------------------------------


@pytest.mark.parametrize("installation", [None, {"id": INSTALLATION + 1}])
def test_a_click_without_our_installation_is_ignored(
    stack: Stack, installation: dict[str, int] | None
) -> None:
    token = add_job(stack.broker, github_subject())
    created = stack.create(token).json()
    payload = _approve_payload(stack, created, "alice")
    if installation is None:
        del payload["installation"]
    else:
        payload["installation"].update(installation)
    response = _send_click(stack, payload)
    assert response.status_code == 202 and response.json()["result"] == "ignored"
    assert _status(stack, token, created["request_id"]) == "pending"


def test_a_click_from_another_repository_id_is_ignored(stack: Stack) -> None:
    token = add_job(stack.broker, github_subject())
    created = stack.create(token).json()
    payload = _approve_payload(stack, created, "alice")
    payload["repository"]["id"] = 999_999  # same name, another repository (recreated)
    response = _send_click(stack, payload)
    assert response.status_code == 202 and response.json()["result"] == "ignored"
    assert _status(stack, token, created["request_id"]) == "pending"


def test_a_deployment_rule_without_our_installation_is_ignored(stack: Stack) -> None:
    add_job(stack.broker, github_subject())
    payload = deployment_rule(stack.schemas)
    del payload["installation"]
    raw = json.dumps(payload).encode()
    headers = github_headers(raw, event="deployment_protection_rule")
    response = post(f"{stack.url}/v1/webhooks/github", raw, headers)
    assert response.status_code == 202 and response.json()["result"] == "ignored"
    assert stack.github.reviews == []


def test_a_request_whose_head_is_unknown_takes_no_click(stack: Stack) -> None:
    """A row without the head it was posted on (an older database) must not accept a click
    on whatever head the payload names."""
    token = add_job(stack.broker, github_subject())
    created = stack.create(token).json()
    with stack.broker.store.engine.begin() as conn:
        conn.execute(
            APPROVALS.update()
            .where(APPROVALS.c.request_id == created["request_id"])
            .values(head_sha=None)
        )
    response = _send_click(stack, _approve_payload(stack, created, "alice", head_sha="2" * 40))
    assert response.status_code == 202 and response.json()["result"] == "ignored"
    assert _status(stack, token, created["request_id"]) == "pending"


# -- one person, one vote; one delivery, one effect ---------------------------------------------------


def test_a_replayed_approving_delivery_counts_once_in_a_quorum(quorum_stack: Stack) -> None:
    stack = quorum_stack
    token = add_job(stack.broker, github_subject())
    created = stack.create(token).json()
    assert stack.click(created, "alice", delivery="d-q1").json()["result"] == "pending"
    replay = stack.click(created, "dana", delivery="d-q1")  # same delivery, another body
    assert replay.status_code == 409
    assert _status(stack, token, created["request_id"]) == "pending"
    assert stack.click(created, "dana", delivery="d-q2").json()["result"] == "approved"


def test_one_id_under_two_logins_counts_once_in_a_quorum(quorum_stack: Stack) -> None:
    stack = quorum_stack
    stack.github.permissions["alice-2"] = "write"
    stack.github.owners["alice-2"] = user_id_of("alice")  # alice, renamed between her clicks
    token = add_job(stack.broker, github_subject())
    created = stack.create(token).json()
    assert stack.click(created, "alice").json()["result"] == "pending"
    second = stack.click(created, "alice-2", user_id=user_id_of("alice"))
    assert second.json()["result"] == "pending" and "already approved" in second.json()["reason"]
    assert _status(stack, token, created["request_id"]) == "pending"


# -- names in users: ------------------------------------------------------------------------------------


def test_a_confusable_login_is_not_a_named_user(named_stack: Stack) -> None:
    """``\\u212aevin`` (KELVIN SIGN) lower-cases to ``kevin``; no forge allows it as a login."""
    stack = named_stack
    confusable = "\u212aevin"
    quoted = "%e2%84%aaevin"  # how the fake sees the login in the URL
    stack.github.permissions[quoted] = "write"
    stack.github.owners[quoted] = user_id_of("mallory")
    token = add_job(stack.broker, github_subject())
    created = stack.create(token).json()
    response = stack.click(created, confusable, user_id=user_id_of("mallory"))
    assert response.json()["result"] == "refused"
    assert "not one of the approvers" in response.json()["reason"]
    assert _status(stack, token, created["request_id"]) == "pending"


def test_a_user_pinned_by_id_is_named_whatever_their_login(named_stack: Stack) -> None:
    stack = named_stack
    stack.github.permissions["dana-renamed"] = "write"
    stack.github.owners["dana-renamed"] = 777001
    token = add_job(stack.broker, github_subject())
    created = stack.create(token).json()
    response = stack.click(created, "dana-renamed", user_id=777001)
    assert response.json()["result"] == "approved"


def test_the_config_refuses_a_non_ascii_login_in_users(issuer: OIDCIssuer, tmp_path: Path) -> None:
    text = approvals_support.approvals_yaml(
        issuer.url,
        f"sqlite:///{tmp_path / 'b.db'}",
        approvals_support.app_private_key(),
        approvers='{users: ["\\u212aevin"]}',
    )
    with pytest.raises(ConfigError, match="users"):
        parse_broker_config(text)


# -- GitLab: a note edited into an approval -------------------------------------------------------------


@pytest.mark.parametrize(
    "edit",
    [
        {"action": "update"},  # GitLab 17.0+
        {"updated_at": "2024-05-01 10:05:00 UTC"},  # GitLab 16.11: edits fire, no action
    ],
)
def test_a_note_edited_into_an_approval_answers_nothing(
    gl_stack: GitLabStack, edit: dict[str, str]
) -> None:
    stack = gl_stack
    token = add_job(stack.broker, gitlab_subject())
    rid = stack.create(token)["request_id"]
    first = stack.note("looks fine to me", 11, "dev", note_id=4001)
    assert first.json()["result"] == "ignored"
    edited = stack.note(f"/airlock approve {rid}", 11, "dev", note_id=4001, **edit)
    assert edited.status_code == 202 and edited.json()["result"] == "ignored"
    assert stack.status(token, rid) == "pending"
    fresh = stack.note(f"/airlock approve {rid}", 11, "dev", note_id=4002, action="create")
    assert fresh.json()["result"] == "approved"  # a new note as first written counts


# -- revoke against a click -------------------------------------------------------------------------


def _revoke(stack: Stack, token: str) -> httpx.Response:
    return httpx.post(
        f"{stack.url}/v1/revoke", json={}, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


def test_a_click_after_revoke_is_refused_and_the_request_denied(stack: Stack) -> None:
    token = add_job(stack.broker, github_subject())
    created = stack.create(token).json()
    assert _revoke(stack, token).status_code == 200
    response = _send_click(stack, _approve_payload(stack, created, "alice"))
    assert response.json()["result"] == "already-decided"
    row = _row(stack, created["request_id"])
    assert row.status == "denied" and row.reason == "job revoked"
    (check,) = stack.github.check_runs.values()
    assert check["conclusion"] == "failure"


def test_the_vote_itself_sees_the_revoke(stack: Stack) -> None:
    """Even when nothing denied the request at revoke (a replica died between the revoke and
    its follow-up), the vote's own transaction refuses a revoked job."""
    stack.broker.on_revoke.clear()
    token = add_job(stack.broker, github_subject())
    created = stack.create(token).json()
    assert _revoke(stack, token).status_code == 200
    response = _send_click(stack, _approve_payload(stack, created, "alice"))
    assert response.json()["result"] == "refused" and "revoked" in response.json()["reason"]
    assert _row(stack, created["request_id"]).status == "pending"  # never approved


def test_a_vote_racing_a_revoke_never_lands_after_it(stack: Stack) -> None:
    """Whichever wins, the record is consistent: an approval only if it came first."""
    for _ in range(3):
        token = add_job(stack.broker, github_subject())
        created = stack.create(token).json()
        results: dict[str, Any] = {}
        payload = _approve_payload(stack, created, "alice")

        def do_click(p: Any = payload, out: dict[str, Any] = results) -> None:
            out["click"] = _send_click(stack, p).json()

        def do_revoke(t: str = token, out: dict[str, Any] = results) -> None:
            out["revoke"] = _revoke(stack, t).status_code

        click = threading.Thread(target=do_click)
        revoke = threading.Thread(target=do_revoke)
        click.start()
        revoke.start()
        click.join(30)
        revoke.join(30)
        row = _row(stack, created["request_id"])
        assert results["revoke"] == 200
        if results["click"]["result"] == "approved":
            assert row.status == "approved"
        else:
            assert row.status == "denied" and row.reason == "job revoked"


def _row(stack: Stack, request_id: str) -> Any:
    row = ApprovalStore(stack.broker.store.engine).get(request_id)
    assert row is not None
    return row
