"""Fakes at the edge we cannot run (GitHub, GitLab) for the approval tests, plus payload builders.

``FakeGitHub`` / ``FakeGitLab`` answer through ``responses`` (PyGithub and python-gitlab speak
``requests``); every GitHub request is validated against ``@octokit/openapi`` and any mismatch
lands in ``errors``. Webhook payloads start from GitHub's own examples and are validated against
``@octokit/openapi-webhooks`` (npm-installed into ``.cache/npm-octokit-webhooks``); GitLab note
events follow the documented "Comment on a merge request" payload.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import hmac
import json
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import requests
import responses
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from openapi_core.contrib.requests import RequestsOpenAPIRequest, RequestsOpenAPIResponse
from tests.providers import conftest as _providers
from tests.support import gitlab_schemas

from airlock.audit import SigningKey
from airlock.broker.service import Broker
from airlock.broker.state import StateStore, token_digest
from airlock.policy.broker_config import parse_broker_config

REPO = "acme/api"
REPO_ID = 123456
INSTALLATION = 4242
WEBHOOK_SECRET = "whsec-test-3f9a1c7e"  # test value
GITLAB_URL = "https://gitlab.example"
GITLAB_TOKEN = "glpat-test-token-000"  # test value
GITLAB_HOOK_TOKEN = "gl-hook-secret-test"  # test value
PROJECT_ID = 20
RUN_ID = "8100200300"
SHA = "9f3c0a1d2b4e5f60718293a4b5c6d7e8f9a0b1c2"
HEAD_SHA = "ec26c3e57ca3a959ca5aad62de7213c562f8c821"
AUDIENCE = "https://airlock.test"


def user_id_of(login: str) -> int:
    """A stable numeric id per person (GitHub ids are immutable; logins are not)."""
    return 100_000 + int(hashlib.sha256(login.lower().encode()).hexdigest()[:8], 16) % 900_000


github_openapi = _providers.github_openapi  # the shared fixture, for modules importing this one

_ROOT = Path(__file__).resolve().parents[2]
_WEBHOOKS_DIR = _ROOT / ".cache" / "npm-octokit-webhooks"
_WEBHOOKS_SPEC = "node_modules/@octokit/openapi-webhooks/generated/api.github.com.json"
_API = r"https://api\.github\.com(?::443)?"


# -- GitHub's REST examples --------------------------------------------------------------------------


@functools.cache
def _github_spec() -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(_providers._octokit_spec_path().read_text())
    return spec


def _on_example(spec: dict[str, Any], method: str, template: str, status: int, data: Any) -> Any:
    """``data`` laid over GitHub's own example answer for the operation: the fakes answer in
    full, as GitHub would, and the answer is then validated against the description."""
    content = spec["paths"][template][method.lower()]["responses"][str(status)]["content"]
    (ref,) = [e["$ref"] for e in content["application/json"]["examples"].values()][:1]
    example = copy.deepcopy(spec["components"]["examples"][ref.rsplit("/", 1)[-1]]["value"])
    if isinstance(data, list):
        item = example[0] if isinstance(example, list) and example else {}
        return [_merge(copy.deepcopy(item), d) for d in data]
    return _merge(example, data)


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in over.items()}}
    return over


# -- GitHub's webhook schemas ---------------------------------------------------------------------


class WebhookSchemas:
    """``@octokit/openapi-webhooks``: example payloads and a validator per schema name."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc

    def example(self, name: str) -> dict[str, Any]:
        value: dict[str, Any] = copy.deepcopy(self.doc["components"]["examples"][name]["value"])
        return value

    def validate(self, schema_name: str, payload: dict[str, Any]) -> None:
        schema = {**self.doc, "$ref": f"#/components/schemas/{schema_name}"}
        jsonschema.Draft202012Validator(schema).validate(payload)


def _webhooks_spec() -> Path:
    path = _WEBHOOKS_DIR / _WEBHOOKS_SPEC
    if not path.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("npm is needed to fetch @octokit/openapi-webhooks (apt-get install -y npm)")
        _WEBHOOKS_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--silent", "@octokit/openapi-webhooks"],
            cwd=_WEBHOOKS_DIR,
            check=True,
            timeout=300,
        )
    return path


@pytest.fixture(scope="session")
def webhook_schemas() -> WebhookSchemas:
    """GitHub's webhook payload schemas and examples."""
    return WebhookSchemas(json.loads(_webhooks_spec().read_text()))


def check_run_click(
    schemas: WebhookSchemas,
    *,
    check_run_id: int,
    external_id: str,
    identifier: str,
    login: str,
    user_id: int | None = None,
    user_type: str = "User",
    head_sha: str = HEAD_SHA,
) -> dict[str, Any]:
    """A ``check_run`` / ``requested_action`` payload, validated against GitHub's schema."""
    payload = schemas.example("check-run-requested-action")
    payload["check_run"].update(id=check_run_id, external_id=external_id, head_sha=head_sha)
    payload["requested_action"] = {"identifier": identifier}
    payload["repository"].update(id=REPO_ID, full_name=REPO, name="api")
    uid = user_id_of(login) if user_id is None else user_id
    payload["sender"].update(login=login, id=uid, type=user_type)
    payload["installation"] = {
        "id": INSTALLATION,
        "node_id": "MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9uMQ==",
    }
    schemas.validate("webhook-check-run-requested-action", payload)
    return payload


def deployment_rule(
    schemas: WebhookSchemas, *, run_id: str = RUN_ID, environment: str = "production"
) -> dict[str, Any]:
    """A ``deployment_protection_rule`` / ``requested`` payload, validated against the schema."""
    base = schemas.example("check-run-requested-action")
    repository = base["repository"]
    repository.update(id=REPO_ID, full_name=REPO, name="api")
    sender = base["sender"]
    payload = {
        "action": "requested",
        "environment": environment,
        "event": "workflow_dispatch",
        "deployment_callback_url": f"https://api.github.com/repos/{REPO}/actions/runs/{run_id}/deployment_protection_rule",
        "deployment": {
            "url": f"https://api.github.com/repos/{REPO}/deployments/1",
            "id": 1,
            "node_id": "MDEwOkRlcGxveW1lbnQx",
            "sha": SHA,
            "ref": "main",
            "task": "deploy",
            "payload": {},
            "environment": environment,
            "description": None,
            "creator": sender,
            "created_at": "2024-05-01T10:00:00Z",
            "updated_at": "2024-05-01T10:00:00Z",
            "statuses_url": f"https://api.github.com/repos/{REPO}/deployments/1/statuses",
            "repository_url": f"https://api.github.com/repos/{REPO}",
        },
        "pull_requests": [],
        "repository": repository,
        "installation": {"id": INSTALLATION, "node_id": "MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9uMQ=="},
        "sender": sender,
    }
    schemas.validate("webhook-deployment-protection-rule-requested", payload)
    return payload


def github_headers(
    body: bytes, *, event: str, delivery: str | None = None, secret: str = WEBHOOK_SECRET
) -> dict[str, str]:
    """The headers GitHub sends, with a correct ``X-Hub-Signature-256`` for ``secret``."""
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/123abc",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-GitHub-Hook-ID": "12312312",
        "X-Hub-Signature-256": signature,
    }


# -- GitLab note events ---------------------------------------------------------------------------


def gitlab_note(
    note: str,
    *,
    user_id: int,
    username: str,
    iid: int = 7,
    note_id: int | None = None,
    updated_at: str = "2024-05-01 10:00:00 UTC",
    action: str | None = None,
) -> dict[str, Any]:
    """A merge request note event, completed and validated against GitLab's payload type.

    ``updated_at`` later than ``created_at`` is an edited note; ``action`` ("create" /
    "update") is GitLab 17.0's ``object_attributes.action``, which the gitbeaker type lacks:
    it is laid over the payload after validation."""
    nid = note_id if note_id is not None else int(time.time() * 1000) % 10**9
    payload = {
        "object_kind": "note",
        "event_type": "note",
        "user": {
            "id": user_id,
            "name": username.title(),
            "username": username,
            "avatar_url": "https://www.gravatar.com/avatar/x",
        },
        "project_id": PROJECT_ID,
        "project": {
            "id": PROJECT_ID,
            "name": "api",
            "description": "",
            "web_url": f"{GITLAB_URL}/acme/api",
            "avatar_url": None,
            "git_ssh_url": "git@gitlab.example:acme/api.git",
            "git_http_url": f"{GITLAB_URL}/acme/api.git",
            "namespace": "acme",
            "visibility_level": 0,
            "path_with_namespace": "acme/api",
            "default_branch": "main",
            "homepage": f"{GITLAB_URL}/acme/api",
            "url": "git@gitlab.example:acme/api.git",
        },
        "object_attributes": {
            "id": nid,
            "note": note,
            "noteable_type": "MergeRequest",
            "author_id": user_id,
            "created_at": "2024-05-01 10:00:00 UTC",
            "updated_at": updated_at,
            "project_id": PROJECT_ID,
            "attachment": None,
            "line_code": "",  # gitbeaker types it string (GitLab's docs example: null)
            "commit_id": "",
            "noteable_id": None,  # gitbeaker: string | null (GitLab's docs example: 99)
            "system": False,
            "st_diff": None,
            "url": f"{GITLAB_URL}/acme/api/-/merge_requests/{iid}#note_{nid}",
        },
        "merge_request": {
            "id": 99,
            "iid": iid,
            "target_branch": "main",
            "source_branch": "agent/migration",
            "source_project_id": PROJECT_ID,
            "author_id": 3,
            "title": "Agent migration",
            "state": "opened",
        },
    }
    full = gitlab_schemas.instance("note_event", **payload)
    problems = gitlab_schemas.validate("note_event", full)
    assert problems == [], problems  # GitLab's payload type (see tests/support/gitlab_schemas)
    if action is not None:
        full["object_attributes"]["action"] = action
    return full


def gitlab_headers(token: str = GITLAB_HOOK_TOKEN, delivery: str | None = None) -> dict[str, str]:
    """The headers GitLab (17.4+) sends with a note event."""
    uid = delivery or str(uuid.uuid4())
    return {
        "Content-Type": "application/json",
        "X-Gitlab-Event": "Note Hook",
        "X-Gitlab-Token": token,
        "X-Gitlab-Webhook-UUID": str(uuid.uuid4()),
        "X-Gitlab-Event-UUID": str(uuid.uuid4()),
        "Idempotency-Key": uid,
    }


# -- fake forges ----------------------------------------------------------------------------------


class FakeGitHub:
    """GitHub's REST API for the calls the approval code makes, each checked against the spec."""

    def __init__(self, rsps: responses.RequestsMock, openapi: Any) -> None:
        self.openapi = openapi
        self.errors: list[str] = []
        self.calls: list[tuple[str, str, Any]] = []
        self.permissions: dict[str, str] = {}
        self.teams: dict[str, set[str]] = {}
        # Who holds a login now (by default the account user_id_of(login)): a test that
        # renames an account and hands its login to another sets it here.
        self.owners: dict[str, int] = {}
        self.pulls: dict[int, dict[str, Any]] = {}
        self.check_runs: dict[int, dict[str, Any]] = {}
        self.created_actions: dict[int, list[dict[str, Any]]] = {}
        self.reviews: list[dict[str, Any]] = []
        self.comments: list[dict[str, Any]] = []
        self.pr_reviews: list[dict[str, Any]] = []
        self.fail_check_runs = False
        self.injected: set[int] = set()  # failure statuses a test injects on purpose
        self._next_id = 9000
        repo = re.escape(REPO)
        self.spec = _github_spec()
        routes: list[tuple[str, str, str, Any]] = [
            (
                "POST",
                rf"{_API}/app/installations/{INSTALLATION}/access_tokens",
                "/app/installations/{installation_id}/access_tokens",
                self._token,
            ),
            (
                "GET",
                rf"{_API}/repos/{repo}/pulls/(\d+)",
                "/repos/{owner}/{repo}/pulls/{pull_number}",
                self._pull,
            ),
            (
                "POST",
                rf"{_API}/repos/{repo}/check-runs",
                "/repos/{owner}/{repo}/check-runs",
                self._create_check,
            ),
            (
                "PATCH",
                rf"{_API}/repos/{repo}/check-runs/(\d+)",
                "/repos/{owner}/{repo}/check-runs/{check_run_id}",
                self._update_check,
            ),
            (
                "GET",
                rf"{_API}/repos/{repo}/collaborators/([^/]+)/permission",
                "/repos/{owner}/{repo}/collaborators/{username}/permission",
                self._permission,
            ),
            (
                "GET",
                rf"{_API}/orgs/([^/]+)/teams/([^/]+)/members",
                "/orgs/{org}/teams/{team_slug}/members",
                self._team_members,
            ),
            (
                "POST",
                rf"{_API}/repos/{repo}/actions/runs/(\d+)/deployment_protection_rule",
                "/repos/{owner}/{repo}/actions/runs/{run_id}/deployment_protection_rule",
                self._review,
            ),
            (
                "GET",
                rf"{_API}/repos/{repo}/issues/(\d+)/comments",
                "/repos/{owner}/{repo}/issues/{issue_number}/comments",
                self._list_comments,
            ),
            (
                "POST",
                rf"{_API}/repos/{repo}/issues/(\d+)/comments",
                "/repos/{owner}/{repo}/issues/{issue_number}/comments",
                self._add_comment,
            ),
            (
                "GET",
                rf"{_API}/repos/{repo}/pulls/(\d+)/reviews",
                "/repos/{owner}/{repo}/pulls/{pull_number}/reviews",
                self._list_reviews,
            ),
        ]
        for method, pattern, template, handler in routes:
            rsps.add_callback(
                method,
                re.compile(pattern + r"(\?.*)?$"),
                callback=self._wrap(method, pattern, template, handler),
            )

    def add_pull(
        self, number: int, author: str, *, author_id: int | None = None, merge_sha: str = SHA
    ) -> None:
        """A pull request whose test merge commit is ``merge_sha`` (by default the job's
        commit: a ``pull_request`` workflow runs ``refs/pull/N/merge``)."""
        self.pulls[number] = {
            "number": number,
            "html_url": f"https://github.com/{REPO}/pull/{number}",
            "head": {"sha": HEAD_SHA, "ref": "agent/migration"},
            "merge_commit_sha": merge_sha,
            "requested_teams": [],  # GitHub's own example lacks a required key here
            "user": {
                "login": author,
                "id": user_id_of(author) if author_id is None else author_id,
                "type": "User",
            },
        }

    def _wrap(self, method: str, pattern: str, template: str, handler: Any) -> Any:
        def callback(request: Any) -> tuple[int, dict[str, str], str]:
            sent = request.copy()
            sent.url = re.sub(
                r"^https://api\.github\.com:443/", "https://api.github.com/", sent.url
            )
            self._validate(sent)
            body = json.loads(request.body) if request.body else None
            path = re.sub(_API, "", request.url.split("?", 1)[0])
            self.calls.append((request.method, path, body))
            groups = re.match(pattern, request.url.split("?", 1)[0]).groups()  # type: ignore[union-attr]
            status, data = handler(body, *groups)
            if 200 <= status < 300 and status != 204:
                data = _on_example(self.spec, method, template, status, data)
            text = "" if status == 204 else json.dumps(data)
            self._validate_response(sent, status, text)
            return status, {"Content-Type": "application/json"}, text

        return callback

    def _validate(self, sent: Any) -> None:
        try:
            self.openapi.validate_request(RequestsOpenAPIRequest(sent))
        except Exception as exc:  # collected, asserted empty when the fixture ends
            self.errors.append(f"{sent.method} {sent.url}: {exc}")

    def _validate_response(self, sent: Any, status: int, text: str) -> None:
        if status in self.injected:
            return
        response = requests.Response()
        response.status_code = status
        response._content = text.encode()
        response.headers["Content-Type"] = "application/json"
        response.url = sent.url
        try:
            self.openapi.validate_response(
                RequestsOpenAPIRequest(sent), RequestsOpenAPIResponse(response)
            )
        except Exception as exc:  # collected, asserted empty when the fixture ends
            found = getattr(exc, "__cause__", None)
            errors = getattr(found, "schema_errors", ()) or getattr(exc, "schema_errors", ())
            detail = "; ".join(f"{list(e.absolute_path)}: {e.message[:120]}" for e in errors)
            self.errors.append(f"answer to {sent.method} {sent.url}: {detail or str(exc)[:300]}")

    def _token(self, _body: Any) -> tuple[int, Any]:
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
        return 201, {
            "token": "ghs_" + "a" * 36,
            "expires_at": expires,
            "permissions": {"checks": "write"},
        }

    def _pull(self, _body: Any, number: str) -> tuple[int, Any]:
        pull = self.pulls.get(int(number))
        return (200, pull) if pull else (404, {"message": "Not Found"})

    def _create_check(self, body: Any) -> tuple[int, Any]:
        if self.fail_check_runs:
            # GitHub answers any call with this 403 when the App lacks a permission; the
            # description documents it in general, not for each operation.
            self.injected.add(403)
            return 403, {"message": "Resource not accessible by integration"}
        self._next_id += 1
        run = {
            **body,
            "id": self._next_id,
            "html_url": f"https://github.com/{REPO}/runs/{self._next_id}",
        }
        self.check_runs[self._next_id] = run
        self.created_actions[self._next_id] = list(body.get("actions", []))
        return 201, run

    def _update_check(self, body: Any, run_id: str) -> tuple[int, Any]:
        self.check_runs[int(run_id)].update(body)
        return 200, self.check_runs[int(run_id)]

    def _permission(self, _body: Any, login: str) -> tuple[int, Any]:
        role = self.permissions.get(login.lower())
        if role is None:
            return 404, {"message": "Not Found"}
        legacy = {"maintain": "write", "triage": "read"}.get(role, role)
        user = {"login": login, "id": self.owner(login), "role_name": role}
        return 200, {"permission": legacy, "role_name": role, "user": user}

    def owner(self, login: str) -> int:
        """The id of the account that holds ``login`` now."""
        return self.owners.get(login.lower(), user_id_of(login))

    def _team_members(self, _body: Any, org: str, slug: str) -> tuple[int, Any]:
        members = sorted(self.teams.get(f"{org}/{slug}", set()))
        return 200, [{"login": m, "id": self.owner(m), "type": "User"} for m in members]

    def _review(self, body: Any, run_id: str) -> tuple[int, Any]:
        self.reviews.append({**body, "run_id": run_id})
        return 204, {}

    def _list_comments(self, _body: Any, number: str) -> tuple[int, Any]:
        return 200, [c for c in self.comments if c["number"] == int(number)]

    def _add_comment(self, body: Any, number: str) -> tuple[int, Any]:
        self._next_id += 1
        comment = {
            "id": self._next_id,
            "number": int(number),
            "body": body["body"],
            "user": {"login": "github-actions[bot]", "id": 41898282, "type": "Bot"},
            "html_url": f"https://github.com/{REPO}/pull/{number}#issuecomment-{self._next_id}",
        }
        self.comments.append(comment)
        return 201, comment

    def _list_reviews(self, _body: Any, number: str) -> tuple[int, Any]:
        return 200, [r for r in self.pr_reviews if r["number"] == int(number)]

    def comment_as(
        self,
        number: int,
        login: str,
        body: str,
        *,
        user_type: str = "User",
        edited: bool = False,
    ) -> None:
        """Someone writes a comment on the pull request (``edited``: and changed it later)."""
        self._next_id += 1
        created = "2024-05-01T10:00:00Z"
        self.comments.append(
            {
                "id": self._next_id,
                "number": number,
                "body": body,
                "user": {"login": login, "id": user_id_of(login), "type": user_type},
                "html_url": "",
                "created_at": created,
                "updated_at": "2024-05-01T10:07:00Z" if edited else created,
            }
        )


class FakeGitLab:
    """GitLab's REST API for merge requests, notes and members, under ``GITLAB_URL``."""

    def __init__(self, rsps: responses.RequestsMock) -> None:
        self.errors: list[str] = []
        self.calls: list[tuple[str, str, Any]] = []
        self.levels: dict[int, int] = {}
        self.bots: set[int] = set()
        self.groups: dict[str, set[int]] = {}
        self.notes: list[dict[str, Any]] = []
        self.unreachable = False
        self._next_id = 500
        api = re.escape(GITLAB_URL) + r"/api/v4"
        project = rf"/projects/(?:{PROJECT_ID}|acme%2Fapi)"
        routes: list[tuple[str, str, str, Any]] = [
            ("GET", rf"{api}{project}/merge_requests/(\d+)", "merge_request", self._mr),
            ("POST", rf"{api}{project}/merge_requests/(\d+)/notes", "note", self._add_note),
            ("GET", rf"{api}{project}/merge_requests/(\d+)/notes", "note", self._list_notes),
            ("PUT", rf"{api}{project}/merge_requests/(\d+)/notes/(\d+)", "note", self._edit_note),
            ("GET", rf"{api}{project}/members/all/(\d+)", "member", self._member),
            ("GET", rf"{api}/groups/([^/]+)/members/all/(\d+)", "member", self._group_member),
            ("GET", rf"{api}/users/(\d+)", "user", self._user),
        ]
        for method, pattern, schema, handler in routes:
            rsps.add_callback(
                method,
                re.compile(pattern + r"(\?.*)?$"),
                callback=self._wrap(pattern, schema, handler),
            )

    def _wrap(self, pattern: str, schema: str, handler: Any) -> Any:
        def callback(request: Any) -> tuple[int, dict[str, str], str]:
            if self.unreachable:
                raise requests.ConnectionError("connection refused (test)")
            url = request.url.split("?", 1)[0]
            body = json.loads(request.body) if request.body else None
            self.calls.append((request.method, url.removeprefix(GITLAB_URL + "/api/v4"), body))
            groups = re.match(pattern, url).groups()  # type: ignore[union-attr]
            status, data = handler(body, *groups)
            if 200 <= status < 300:
                data = self._answer(request, schema, data)
            return status, {"Content-Type": "application/json"}, json.dumps(data)

        return callback

    def _answer(self, request: Any, schema: str, data: Any) -> Any:
        """``data`` as a full GitLab answer of type ``schema``, checked against that type."""
        items = data if isinstance(data, list) else [data]
        full = [gitlab_schemas.instance(schema, **item) for item in items]
        for item in full:
            for problem in gitlab_schemas.validate(schema, item):
                self.errors.append(f"answer to {request.method} {request.url}: {problem}")
        return full if isinstance(data, list) else full[0]

    def _mr(self, _body: Any, iid: str) -> tuple[int, Any]:
        return 200, {
            "iid": int(iid),
            "author": {"id": 3, "username": "mr-author"},
            "sha": HEAD_SHA,
            "web_url": f"{GITLAB_URL}/acme/api/-/merge_requests/{iid}",
        }

    def _add_note(self, body: Any, iid: str) -> tuple[int, Any]:
        return 201, self.add_note(
            int(iid), body["body"], user_id=90, username="project_20_bot_1a2b"
        )

    def add_note(
        self, iid: int, text: str, *, user_id: int, username: str, edited: bool = False
    ) -> dict[str, Any]:
        """Someone (or the job's token) writes a note on the merge request (``edited``: and
        changed it afterwards)."""
        self._next_id += 1
        created = "2024-05-01T10:00:00.000Z"
        note = {
            "id": self._next_id,
            "iid": iid,
            "body": text,
            "system": False,
            "author": {"id": user_id, "username": username},
            "created_at": created,
            "updated_at": "2024-05-01T10:07:00.000Z" if edited else created,
        }
        self.notes.append(note)
        return note

    def _list_notes(self, _body: Any, iid: str) -> tuple[int, Any]:
        return 200, [n for n in self.notes if n["iid"] == int(iid)]

    def _edit_note(self, body: Any, _iid: str, note_id: str) -> tuple[int, Any]:
        for note in self.notes:
            if note["id"] == int(note_id):
                note["body"] = body["body"]
                return 200, note
        return 404, {"message": "404 Not found"}

    def _member(self, _body: Any, user_id: str) -> tuple[int, Any]:
        level = self.levels.get(int(user_id))
        if level is None:
            return 404, {"message": "404 Not found"}
        return 200, {"id": int(user_id), "access_level": level, "state": "active"}

    def _group_member(self, _body: Any, group: str, user_id: str) -> tuple[int, Any]:
        members = self.groups.get(group.replace("%2F", "/"), set())
        if int(user_id) in members:
            return 200, {"id": int(user_id), "access_level": 30, "state": "active"}
        return 404, {"message": "404 Not found"}

    def _user(self, _body: Any, user_id: str) -> tuple[int, Any]:
        return 200, {
            "id": int(user_id),
            "username": f"u{user_id}",
            "bot": int(user_id) in self.bots,
        }


# -- the broker -----------------------------------------------------------------------------------


def app_private_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def approvals_yaml(issuer_url: str, state: str, pem: str, *, approvers: str = "{}") -> str:
    return f"""
version: 1
issuers:
  - {{name: github, url: "{issuer_url}", audience: "{AUDIENCE}", platform: github}}
providers:
  static: {{secrets: {{DEPLOY_KEY: "static-deploy-key-value"}}}}
grants:
  deploy: {{provider: static, secrets: [DEPLOY_KEY], ttl: 15m}}
rules:
  - id: api-main
    issuer: github
    claims: {{repository_id: "{REPO_ID}", repository_owner_id: "7890"}}
    grants: [deploy]
state: "{state}"
approvals:
  github_app:
    app_id: 12345
    installation_id: {INSTALLATION}
    private_key: {json.dumps(pem)}
    webhook_secret: "{WEBHOOK_SECRET}"
    environments: [production]
  gitlab: {{url: "{GITLAB_URL}", token: "{GITLAB_TOKEN}", webhook_token: "{GITLAB_HOOK_TOKEN}"}}
  approvers: {approvers}
  max_timeout: 1h
"""


def github_subject(**overrides: Any) -> dict[str, Any]:
    return {
        "repository": REPO,
        "repository_id": str(REPO_ID),
        "repository_owner_id": "7890",
        "run_id": RUN_ID,
        "sha": SHA,
        "actor": "octocat",
        "actor_id": str(user_id_of("octocat")),
        **overrides,
    }


def gitlab_subject(**overrides: Any) -> dict[str, Any]:
    return {
        "project_path": "acme/api",
        "project_id": str(PROJECT_ID),
        "pipeline_id": "574",
        "user_login": "sample-user",
        "user_id": "1",
        **overrides,
    }


def add_job(broker: Broker, subject: dict[str, Any]) -> str:
    """A job token for ``subject`` in the broker's ledger (as /v1/exchange would leave it)."""
    token = "job-" + uuid.uuid4().hex
    broker.store.add_job(token_digest(token), subject, time.time() + 3600, issuer="github")
    return token


def build_broker(
    issuer_url: str, state: str, *, approvers: str = "{}"
) -> tuple[Broker, StateStore]:
    config = parse_broker_config(
        approvals_yaml(issuer_url, state, app_private_key(), approvers=approvers)
    )
    store = StateStore(config.state)
    return Broker(config, store=store, key=SigningKey.generate()), store


@pytest.fixture
def forges(github_openapi: Any) -> Iterator[tuple[FakeGitHub, FakeGitLab]]:
    """Both fake forges on one ``responses`` mock; local HTTP (the broker) passes through."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.add_passthru(re.compile(r"http://127\.0\.0\.1"))
        github, gitlab = FakeGitHub(rsps, github_openapi), FakeGitLab(rsps)
        yield github, gitlab
    # Every request we sent and every answer the fakes gave must fit the forge's description.
    assert github.errors == [], "\n".join(github.errors)
    assert gitlab.errors == [], "\n".join(gitlab.errors)


def post(url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(url, content=body, headers=headers, timeout=30)
