"""Broker approvals with GitLab: a merge request note, decided by note events on the webhook."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.broker import approvals_support
from tests.broker.approvals_support import (
    FakeGitHub,
    FakeGitLab,
    add_job,
    build_broker,
    gitlab_headers,
    gitlab_note,
    gitlab_subject,
    post,
)
from tests.support.broker_server import BrokerServer
from tests.support.oidc_issuer import OIDCIssuer

from airlock.broker.app import create_app
from airlock.broker.service import Broker
from airlock.gate import Operation

forges = approvals_support.forges
github_openapi = approvals_support.github_openapi

DEVELOPER, REPORTER, MAINTAINER = 30, 20, 40


@dataclass
class Stack:
    broker: Broker
    url: str
    gitlab: FakeGitLab

    def create(self, token: str, **overrides: Any) -> dict[str, Any]:
        op = Operation("sql", "DROP TABLE users", "no-drop", "appdb", "acme/api", None, "574", "s")
        body = {
            "backend": "gitlab",
            "operation": op.to_dict(),
            "timeout": 600,
            "merge_request": 7,
            **overrides,
        }
        response = httpx.post(
            f"{self.url}/v1/approvals", json=body, headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 201, response.text
        data: dict[str, Any] = response.json()
        return data

    def note(self, text: str, user_id: int, username: str, **kw: Any) -> httpx.Response:
        headers = gitlab_headers(
            kw.pop("token", approvals_support.GITLAB_HOOK_TOKEN), kw.pop("delivery", None)
        )
        raw = json.dumps(gitlab_note(text, user_id=user_id, username=username, **kw)).encode()
        return post(f"{self.url}/v1/webhooks/gitlab", raw, headers)

    def status(self, token: str, request_id: str) -> str:
        response = httpx.get(
            f"{self.url}/v1/approvals/{request_id}", headers={"Authorization": f"Bearer {token}"}
        )
        return str(response.json()["status"])


@pytest.fixture
def stack(
    issuer: OIDCIssuer, tmp_path: Path, forges: tuple[FakeGitHub, FakeGitLab]
) -> Iterator[Stack]:
    broker, store = build_broker(issuer.url, f"sqlite:///{tmp_path / 'broker.db'}")
    gitlab = forges[1]
    gitlab.levels.update(
        {11: DEVELOPER, 12: REPORTER, 3: MAINTAINER, 1: MAINTAINER, 13: MAINTAINER}
    )
    gitlab.bots.add(13)
    try:
        with BrokerServer(create_app(broker)) as server:
            yield Stack(broker, server.url, gitlab)
    finally:
        broker.close()
        store.close()


def test_the_note_describes_the_operation_and_a_member_decides(stack: Stack) -> None:
    token = add_job(stack.broker, gitlab_subject())
    created = stack.create(token)
    (posted,) = stack.gitlab.notes
    rid = created["request_id"]
    assert f"/airlock approve {rid}" in posted["body"] and "DROP TABLE users" in posted["body"]
    assert "`sample-user`" in posted["body"] and created["operation_hash"] in posted["body"]
    response = stack.note(f"LGTM\n/airlock approve {rid}", 11, "dev")
    assert response.json()["result"] == "approved"
    assert stack.status(token, rid) == "approved"
    assert "**Approved** by `gitlab:dev`" in stack.gitlab.notes[0]["body"]


@pytest.mark.parametrize(
    ("user_id", "username", "why"),
    [
        (1, "sample-user", "asked for this operation"),
        (3, "mr-author", "wrote the pull/merge request"),
        (1, "sample-user-renamed", "asked for this operation"),  # same id, new username
        (3, "mr-author-renamed", "wrote the pull/merge request"),
        (1, "Sample-User", "asked for this operation"),
        (12, "reporter", "lacks write permission"),
        (99, "outsider", "lacks write permission"),
        (13, "service-account", "is a bot"),
        (14, "project_20_bot_3f9a", "is a bot"),
    ],
)
def test_notes_that_must_not_approve(stack: Stack, user_id: int, username: str, why: str) -> None:
    token = add_job(stack.broker, gitlab_subject())
    rid = stack.create(token)["request_id"]
    response = stack.note(f"/airlock approve {rid}", user_id, username)
    assert response.json()["result"] == "refused" and why in response.json()["reason"]
    assert stack.status(token, rid) == "pending"


def test_bad_token_replays_and_malformed_bodies_change_nothing(stack: Stack) -> None:
    token = add_job(stack.broker, gitlab_subject())
    rid = stack.create(token)["request_id"]
    assert stack.note(f"/airlock approve {rid}", 11, "dev", token="guess").status_code == 401
    first = stack.note(f"/airlock approve {rid}", 12, "reporter", note_id=4242, delivery="k-1")
    assert first.json()["result"] == "refused"
    assert stack.note(f"/airlock approve {rid}", 11, "dev", delivery="k-1").status_code == 409
    same_note = stack.note(f"/airlock approve {rid}", 11, "dev", note_id=4242)
    assert same_note.status_code == 409  # the same note, delivered under a new key
    url = f"{stack.url}/v1/webhooks/gitlab"
    headers = gitlab_headers()
    assert post(url, b"{not json", headers).status_code == 400
    bad = json.dumps({"object_kind": "note", "user": {"id": "x"}}).encode()
    assert post(url, bad, gitlab_headers()).status_code == 400
    missing = gitlab_headers()
    for name in ("Idempotency-Key", "X-Gitlab-Webhook-UUID", "X-Gitlab-Event-UUID"):
        del missing[name]
    assert post(url, b"{}", missing).status_code == 400
    assert stack.status(token, rid) == "pending"


def test_a_note_for_another_merge_request_or_a_deny(stack: Stack) -> None:
    token = add_job(stack.broker, gitlab_subject())
    rid = stack.create(token)["request_id"]
    elsewhere = stack.note(f"/airlock approve {rid}", 11, "dev", iid=8)
    assert elsewhere.status_code == 202 and stack.status(token, rid) == "pending"
    assert stack.note(f"/airlock deny {rid}", 1, "sample-user").json()["result"] == "denied"
    assert stack.status(token, rid) == "denied"
    assert stack.note(f"/airlock approve {rid}", 11, "dev").json()["result"] == "already-decided"
