"""Approval policy at the broker: several distinct approvers (min_approvals), and justifications."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from tests.broker import approvals_support
from tests.broker.approvals_support import (
    RUN_ID,
    SHA,
    FakeGitHub,
    FakeGitLab,
    WebhookSchemas,
    add_job,
    app_private_key,
    approvals_yaml,
    build_broker,
    check_run_click,
    github_headers,
    github_subject,
    gitlab_headers,
    gitlab_note,
    gitlab_subject,
    post,
    user_id_of,
)
from tests.support.broker_server import BrokerServer
from tests.support.oidc_issuer import OIDCIssuer

from airlock.audit import SigningKey
from airlock.broker.app import create_app
from airlock.broker.approvals import VOTES
from airlock.broker.service import Broker
from airlock.errors import ConfigError
from airlock.gate import Operation
from airlock.gate.broker import decision_from_status
from airlock.gate.github_check import GitHubCheckBackend
from airlock.gate.gitlab import GitLabApi, GitLabNotesBackend
from airlock.gate.rules import ApproverRules, parse_command, required_approvals
from airlock.policy.broker_config import parse_broker_config

forges = approvals_support.forges
github_openapi = approvals_support.github_openapi
webhook_schemas = approvals_support.webhook_schemas

DEVELOPER, MAINTAINER = 30, 40


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Stack:
    broker: Broker
    url: str
    github: FakeGitHub
    gitlab: FakeGitLab
    schemas: WebhookSchemas

    def create(self, token: str, backend: str = "github-check", **extra: Any) -> dict[str, Any]:
        github = backend == "github-check"
        op = Operation(
            "sql",
            "DROP TABLE users",
            "no-drop",
            "appdb",
            "acme/api",
            SHA if github else None,
            RUN_ID if github else "574",
            "s-1",
        )
        body = {
            "backend": backend,
            "operation": op.to_dict(),
            "timeout": 600,
            **({"pull_request": 12} if github else {"merge_request": 7}),
            **extra,
        }
        response = httpx.post(f"{self.url}/v1/approvals", json=body, headers=_auth(token))
        assert response.status_code == 201, response.text
        data: dict[str, Any] = response.json()
        return data

    def click(
        self,
        created: dict[str, Any],
        login: str,
        *,
        approve: bool = True,
        user_id: int | None = None,
    ) -> str:
        run_id = int(created["url"].rsplit("/", 1)[-1])
        identifier = self.github.created_actions[run_id][0 if approve else 1]["identifier"]
        payload = check_run_click(
            self.schemas,
            check_run_id=run_id,
            external_id=created["request_id"],
            identifier=identifier,
            login=login,
            user_id=user_id,
        )
        raw = json.dumps(payload).encode()
        response = post(
            f"{self.url}/v1/webhooks/github", raw, github_headers(raw, event="check_run")
        )
        assert response.status_code == 200, response.text
        return str(response.json()["result"])

    def note(self, text: str, user_id: int, username: str) -> dict[str, Any]:
        raw = json.dumps(gitlab_note(text, user_id=user_id, username=username)).encode()
        response = post(f"{self.url}/v1/webhooks/gitlab", raw, gitlab_headers())
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data

    def status(self, token: str, request_id: str) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/v1/approvals/{request_id}", headers=_auth(token))
        data: dict[str, Any] = response.json()
        return data

    def check_run(self, created: dict[str, Any]) -> dict[str, Any]:
        return self.github.check_runs[int(created["url"].rsplit("/", 1)[-1])]

    def votes(self, request_id: str) -> list[str]:
        with self.broker.store.engine.connect() as conn:
            query = sa.select(VOTES.c.by).where(VOTES.c.request_id == request_id)
            return sorted(r.by.split(":", 1)[1] for r in conn.execute(query))


@pytest.fixture
def stack(
    issuer: OIDCIssuer,
    tmp_path: Path,
    forges: tuple[FakeGitHub, FakeGitLab],
    webhook_schemas: WebhookSchemas,
) -> Iterator[Stack]:
    broker, store = build_broker(
        issuer.url, f"sqlite:///{tmp_path / 'broker.db'}", approvers="{min_approvals: 2}"
    )
    github, gitlab = forges
    github.add_pull(12, author="pr-author")
    github.permissions.update(
        {"alice": "write", "dana": "maintain", "erin": "write", "octocat": "admin"}
    )
    gitlab.levels.update({11: DEVELOPER, 15: MAINTAINER, 1: MAINTAINER})
    try:
        with BrokerServer(create_app(broker)) as server:
            yield Stack(broker, server.url, github, gitlab, webhook_schemas)
    finally:
        broker.close()
        store.close()


def _verified(stack: Stack, body: dict[str, Any]) -> bool:
    (entry,) = stack.broker.public_keys()
    decision = decision_from_status(body)
    assert decision is not None
    return decision.verify(
        load_pem_public_key(entry["public_pem"].encode()), body["operation_hash"]
    )  # type: ignore[arg-type]


def test_two_distinct_approvers_are_needed_and_the_check_run_counts(stack: Stack) -> None:
    token = add_job(stack.broker, github_subject())
    created = stack.create(token)
    rid = created["request_id"]
    assert stack.click(created, "dana") == "pending"
    assert stack.status(token, rid)["status"] == "pending"
    check = stack.check_run(created)
    assert check["conclusion"] == "action_required" and len(check["actions"]) == 2
    assert check["output"]["title"].startswith("1 of 2 approvals")
    assert "`github:dana`" in check["output"]["summary"]
    assert stack.click(created, "alice") == "approved"
    body = stack.status(token, rid)
    assert body["status"] == "approved" and body["by"] == "github:alice,github:dana"
    assert _verified(stack, body)
    assert stack.check_run(created)["conclusion"] == "success"
    assert stack.click(created, "erin") == "already-decided"
    assert stack.votes(rid) == ["alice", "dana"]
    assert stack.github.errors == []


def test_the_same_approver_twice_counts_once(stack: Stack) -> None:
    token = add_job(stack.broker, github_subject())
    created = stack.create(token)
    assert stack.click(created, "alice") == "pending"
    assert stack.click(created, "Alice") == "pending"  # logins compare without case
    assert stack.status(token, created["request_id"])["status"] == "pending"
    assert stack.votes(created["request_id"]) == ["alice"]


def test_one_person_under_two_logins_counts_once(stack: Stack) -> None:
    """A rename between two clicks must not make one approver count twice."""
    stack.github.permissions["alice-renamed"] = "write"
    stack.github.owners["alice-renamed"] = user_id_of("alice")  # the same account, renamed
    token = add_job(stack.broker, github_subject())
    created = stack.create(token)
    assert stack.click(created, "alice") == "pending"
    assert stack.click(created, "alice-renamed", user_id=user_id_of("alice")) == "pending"
    assert stack.status(token, created["request_id"])["status"] == "pending"
    assert len(stack.votes(created["request_id"])) == 1


def test_one_entitled_deny_after_an_approval_decides_denied(stack: Stack) -> None:
    token = add_job(stack.broker, github_subject())
    created = stack.create(token)
    assert stack.click(created, "alice") == "pending"
    assert stack.click(created, "dana", approve=False) == "denied"
    body = stack.status(token, created["request_id"])
    assert body["status"] == "denied" and body["by"] == "github:dana" and _verified(stack, body)
    assert stack.click(created, "erin") == "already-decided"
    assert stack.check_run(created)["conclusion"] == "failure"


def test_refused_clickers_do_not_count_towards_the_quorum(stack: Stack) -> None:
    token = add_job(stack.broker, github_subject())
    created = stack.create(token)
    assert stack.click(created, "octocat") == "refused"  # the requester
    assert stack.click(created, "pr-author") == "refused"
    assert stack.click(created, "alice") == "pending"
    assert stack.votes(created["request_id"]) == ["alice"]


def test_the_job_may_ask_for_more_approvers_never_fewer(stack: Stack) -> None:
    token = add_job(stack.broker, github_subject())
    fewer = stack.create(token, approvers={"min_approvals": 1})
    assert stack.click(fewer, "alice") == "pending"  # the broker's 2 still holds
    more = stack.create(token, approvers={"min_approvals": 3})
    assert stack.click(more, "alice") == "pending" and stack.click(more, "dana") == "pending"
    assert stack.check_run(more)["output"]["title"].startswith("2 of 3 approvals")
    assert stack.click(more, "erin") == "approved"
    body = stack.status(token, more["request_id"])
    assert body["by"] == "github:alice,github:dana,github:erin"


def test_racing_approvals_settle_exactly_once(stack: Stack) -> None:
    token = add_job(stack.broker, github_subject())
    created = stack.create(token)
    users = [f"user{i}" for i in range(6)]
    stack.github.permissions.update({u: "write" for u in users})
    results: list[str] = []
    barrier = threading.Barrier(len(users))

    def click(login: str) -> None:
        barrier.wait()
        results.append(stack.click(created, login))

    threads = [threading.Thread(target=click, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(results).count("approved") == 1
    assert results.count("pending") == 1 and results.count("already-decided") == 4
    body = stack.status(token, created["request_id"])
    assert body["status"] == "approved" and len(body["by"].split(",")) == 2
    assert sum(1 for c in stack.github.calls if c[0] == "PATCH" and c[2]["actions"] == []) == 1


def test_gitlab_note_shows_progress_and_two_members_decide(stack: Stack) -> None:
    token = add_job(stack.broker, gitlab_subject())
    created = stack.create(token, backend="gitlab")
    rid = created["request_id"]
    assert stack.note(f"/airlock approve {rid}", 11, "dev")["result"] == "pending"
    assert "**1 of 2 approvals** so far (`gitlab:dev`)" in stack.gitlab.notes[0]["body"]
    assert stack.note(f"/airlock approve {rid}", 15, "lead")["result"] == "approved"
    assert stack.status(token, rid)["by"] == "gitlab:dev,gitlab:lead"


def test_gitlab_justification_required_refuses_a_bare_note_and_records_a_reason(
    stack: Stack,
) -> None:
    token = add_job(stack.broker, gitlab_subject())
    created = stack.create(
        token, backend="gitlab", approvers={"min_approvals": 1, "require_justification": True}
    )
    rid = created["request_id"]
    bare = stack.note(f"/airlock approve {rid}", 11, "dev")
    assert bare["result"] == "refused" and "justification is required" in bare["reason"]
    reply = stack.gitlab.notes[-1]["body"]
    assert reply.startswith("@dev ") and f"/airlock approve {rid} <why>" in reply
    assert stack.votes(rid) == [] and stack.status(token, rid)["status"] == "pending"
    secret = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"  # a token shape: masked
    why = f"because the migration was reviewed {secret} " + "x" * 2000
    stack.note(f"/airlock approve {rid} {why}", 11, "dev")  # one of two: still pending
    counted = stack.note(f"/airlock approve {rid} rollback plan is in the MR", 15, "lead")
    assert counted["result"] == "approved"
    body = stack.status(token, rid)
    assert body["status"] == "approved" and _verified(stack, body)
    assert "gitlab:lead: rollback plan is in the MR" in body["reason"]
    assert "gitlab:dev: because the migration was reviewed [MASKED:" in body["reason"]
    assert secret not in body["reason"] and len(body["reason"]) < 2200
    with stack.broker.store.engine.connect() as conn:
        stored = conn.execute(sa.select(VOTES.c.justification)).scalars().all()
    assert max(len(s or "") for s in stored) == 1000


def test_a_deny_needs_no_justification(stack: Stack) -> None:
    token = add_job(stack.broker, gitlab_subject())
    created = stack.create(token, backend="gitlab", approvers={"require_justification": True})
    rid = created["request_id"]
    assert stack.note(f"/airlock deny {rid}", 11, "dev")["result"] == "denied"


def test_github_check_refuses_require_justification_everywhere(
    stack: Stack, issuer: OIDCIssuer, tmp_path: Path
) -> None:
    token = add_job(stack.broker, github_subject())
    body = {
        "backend": "github-check",
        "operation": Operation("sql", "DROP TABLE t", "no-drop").to_dict(),
        "timeout": 60,
        "pull_request": 12,
        "approvers": {"require_justification": True},
    }
    response = httpx.post(f"{stack.url}/v1/approvals", json=body, headers=_auth(token))
    assert response.status_code == 400 and "only with the gitlab backend" in response.text
    with pytest.raises(ConfigError, match="cannot require a justification"):
        GitHubCheckBackend(
            stack.url,
            token,
            key=SigningKey.generate(),
            approvers=ApproverRules(require_justification=True),
        )
    text = approvals_yaml(
        issuer.url,
        f"sqlite:///{tmp_path / 'x.db'}",
        app_private_key(),
        approvers="{require_justification: true}",
    )
    with pytest.raises(ConfigError, match="check run button carries no text"):
        parse_broker_config(text)


def test_rules_parse_and_bounds() -> None:
    assert parse_command("/airlock approve " + "a" * 32 + " because  reviewed ") is not None
    command = parse_command("LGTM\n/airlock approve " + "a" * 32 + " because reviewed\nthanks")
    assert command is not None and command.justification == "because reviewed\nthanks"
    assert ApproverRules.from_dict({"min_approvals": 0}).min_approvals == 10
    assert ApproverRules.from_dict({"min_approvals": "2"}).min_approvals == 10
    rules = [ApproverRules(min_approvals=2), ApproverRules.from_dict({"min_approvals": 3})]
    assert required_approvals(rules) == 3
    assert ApproverRules.from_dict(rules[1].to_dict()) == rules[1]
    with pytest.raises(ConfigError, match="min_approvals above 1 needs the broker"):
        GitLabNotesBackend(
            GitLabApi("https://gitlab.example", private_token="t"),  # test value
            "20",
            7,
            key=SigningKey.generate(),
            approvers=ApproverRules(min_approvals=2),
        )


def test_an_approver_who_lost_their_rights_no_longer_counts_towards_the_quorum(
    stack: Stack,
) -> None:
    """Attack: dana approves, then loses write access (or leaves the team); alice's click
    must not complete the quorum with dana's stale vote. Rights are asked again."""
    token = add_job(stack.broker, github_subject())
    created = stack.create(token)
    assert stack.click(created, "dana") == "pending"
    stack.github.permissions["dana"] = "read"
    assert stack.click(created, "alice") == "pending"
    assert stack.status(token, created["request_id"])["status"] == "pending"
    assert stack.votes(created["request_id"]) == ["alice"]
    assert stack.click(created, "erin") == "approved"
