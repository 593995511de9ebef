"""Broker-less backends: github-comment (PR comments and reviews) and gitlab notes, polled with
the job's token; GitHub requests validated against GitHub's OpenAPI description."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from tests.broker import approvals_support
from tests.broker.approvals_support import (
    GITLAB_TOKEN,
    GITLAB_URL,
    REPO,
    FakeGitHub,
    FakeGitLab,
    user_id_of,
)

from airlock.audit import SigningKey
from airlock.gate import Operation
from airlock.gate.github_api import GitHubApi
from airlock.gate.github_comment import GitHubCommentBackend
from airlock.gate.gitlab import GitLabApi, GitLabNotesBackend
from airlock.gate.rules import ApproverRules

forges = approvals_support.forges
github_openapi = approvals_support.github_openapi

OP = Operation("http", "DELETE /repos/acme/api/branches/main", "protect-main", "forge", REPO)


@pytest.fixture
def comment_backend(
    forges: tuple[FakeGitHub, FakeGitLab],
) -> Iterator[tuple[GitHubCommentBackend, FakeGitHub]]:
    github = forges[0]
    github.add_pull(12, author="pr-author")
    github.permissions.update({"alice": "write", "reader": "read", "octocat": "admin"})
    api = GitHubApi.with_token("ghs_" + "t" * 36)
    backend = GitHubCommentBackend(
        api, REPO, 12, key=SigningKey.generate(), requester="octocat",
        requester_id=str(user_id_of("octocat")), approvers=ApproverRules(),
    )  # fmt: skip
    backend.poll_interval = 0.05
    yield backend, github
    api.close()


def test_comment_is_posted_and_the_first_entitled_answer_decides(
    comment_backend: tuple[GitHubCommentBackend, FakeGitHub],
) -> None:
    backend, github = comment_backend
    rid = backend.request(OP, timeout=30)
    (posted,) = github.comments
    assert f"/airlock approve {rid}" in posted["body"] and OP.text in posted["body"]
    github.comment_as(12, "octocat", f"/airlock approve {rid}")  # the requester
    github.comment_as(12, "pr-author", f"/airlock approve {rid}")  # the author
    github.comment_as(12, "reader", f"/airlock approve {rid}")  # no write permission
    github.comment_as(12, "renovate[bot]", f"/airlock approve {rid}", user_type="Bot")
    github.comment_as(12, "alice", f"/airlock approve {'f' * 32}")  # another request
    github.comment_as(12, "alice", f"/airlock approve {rid}", edited=True)  # was "lgtm"
    assert backend.status(rid) is None
    github.pr_reviews.append(
        {
            "id": 77,
            "number": 12,
            "body": f"ok\n/airlock approve {rid}",
            "user": {"login": "alice", "id": user_id_of("alice"), "type": "User"},
        }
    )
    decision = asyncio.run(backend.wait(rid, 5))
    assert decision.approved and decision.by == "github:alice"
    assert github.errors == []


def test_comment_deny_and_expiry(comment_backend: tuple[GitHubCommentBackend, FakeGitHub]) -> None:
    backend, github = comment_backend
    rid = backend.request(OP, timeout=30)
    github.comment_as(12, "octocat", f"/airlock deny {rid}")  # the requester may stop it
    decision = asyncio.run(backend.wait(rid, 5))
    assert not decision.approved and decision.reason == "denied in a comment"
    other = backend.request(OP, timeout=0.2)
    expired = asyncio.run(backend.wait(other, 0.2))
    assert not expired.approved and expired.reason == "expired"


@pytest.fixture
def notes_backend(
    forges: tuple[FakeGitHub, FakeGitLab],
) -> Iterator[tuple[GitLabNotesBackend, FakeGitLab]]:
    gitlab = forges[1]
    gitlab.levels.update({11: 30, 12: 20, 1: 40, 3: 40})
    api = GitLabApi(GITLAB_URL, private_token=GITLAB_TOKEN)
    backend = GitLabNotesBackend(
        api, "acme/api", 7, key=SigningKey.generate(), requester="sample-user", requester_id="1"
    )
    backend.poll_interval = 0.05
    yield backend, gitlab
    api.close()


def test_gitlab_notes_without_a_broker(
    notes_backend: tuple[GitLabNotesBackend, FakeGitLab],
) -> None:
    backend, gitlab = notes_backend
    rid = backend.request(OP, timeout=30)
    assert f"/airlock approve {rid}" in gitlab.notes[0]["body"]
    for user_id, name in (
        (1, "sample-user"),
        (3, "mr-author"),
        (12, "reporter"),
        (90, "project_20_bot_1a2b"),
    ):
        gitlab.add_note(7, f"/airlock approve {rid}", user_id=user_id, username=name)
    gitlab.add_note(7, f"/airlock approve {rid}", user_id=11, username="dev", edited=True)
    assert backend.status(rid) is None  # none of these decides; an edited note counts for nothing
    gitlab.add_note(7, f"/airlock approve {rid}", user_id=11, username="dev")
    decision = asyncio.run(backend.wait(rid, 5))
    assert decision.approved and decision.by == "gitlab:dev"


def test_forge_unreachable_keeps_holding_until_expiry(
    notes_backend: tuple[GitLabNotesBackend, FakeGitLab],
) -> None:
    backend, gitlab = notes_backend
    rid = backend.request(OP, timeout=0.5)
    gitlab.unreachable = True
    gitlab.add_note(7, f"/airlock approve {rid}", user_id=11, username="dev")  # never seen
    decision = asyncio.run(backend.wait(rid, 0.5))
    assert not decision.approved and decision.reason == "expired"
