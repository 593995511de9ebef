"""The GitLab provider through `responses`, bodies checked against GitLab's documented API.

The schema below transcribes "Project access tokens API" (docs.gitlab.com/api/project_access_tokens,
"Create a project access token"): name and scopes required; access_level one of 10, 15, 20, 30,
40, 50; expires_at a YYYY-MM-DD date; the group API (group_access_tokens) takes the same body.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import jsonschema
import pytest
import requests
import responses
from hypothesis import given, settings
from hypothesis import strategies as st

from airlock.errors import ConfigError
from airlock.providers.gitlab import GitLabProvider, upstream_expiry
from airlock.providers.interface import IssueRequest, ProviderError

GITLAB = "https://gitlab.example.com"
ADMIN_TOKEN = "glpat-AdminBrokerToken0123456789"  # shape only
ISSUED = "glpat-IssuedProjectToken9876543210"  # shape only

DOCUMENTED_CREATE_BODY = {
    "type": "object",
    "required": ["name", "scopes"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 255},
        "scopes": {
            "type": "array",
            "minItems": 1,
            "items": {
                "enum": [
                    "api", "read_api", "read_registry", "write_registry", "read_repository",
                    "write_repository", "create_runner", "manage_runner", "ai_features",
                    "k8s_proxy", "read_observability", "write_observability", "self_rotate",
                ]
            },
        },
        "access_level": {"enum": [10, 15, 20, 30, 40, 50]},
        "expires_at": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"},
        "description": {"type": "string"},
    },
}  # fmt: skip


@pytest.fixture
def mocked() -> Any:
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        yield rsps


def _provider(**config: Any) -> GitLabProvider:
    return GitLabProvider.from_config({"url": GITLAB, "token": ADMIN_TOKEN, **config})


def _request(ttl: int = 900, **settings: Any) -> IssueRequest:
    grant = {"project": "acme/api", "scopes": ["read_repository"], "access_level": "reporter"}
    return IssueRequest("gl-read", {**grant, **settings}, "l0011aa22bb33cc44dd55", ttl, "run-7-1")


def _created(token_id: int = 77) -> dict[str, Any]:
    return {"id": token_id, "name": "x", "token": ISSUED, "scopes": ["read_repository"],
            "access_level": 20, "expires_at": "2030-01-01", "active": True, "revoked": False}  # fmt: skip


def test_issue_posts_the_documented_body(mocked: Any) -> None:
    url = f"{GITLAB}/api/v4/projects/acme%2Fapi/access_tokens"
    mocked.post(url, json=_created(), status=201)
    cred = _provider().issue(_request())
    (call,) = mocked.calls
    assert call.request.headers["PRIVATE-TOKEN"] == ADMIN_TOKEN
    body = json.loads(call.request.body)
    jsonschema.validate(body, DOCUMENTED_CREATE_BODY)
    assert body["scopes"] == ["read_repository"]
    assert body["access_level"] == 20
    assert body["name"] == "airlock-l0011aa22bb33cc44dd55-run-7-1"
    tomorrow = datetime.now(UTC).date() + timedelta(days=1)
    assert date.fromisoformat(body["expires_at"]) in (tomorrow, tomorrow + timedelta(days=1))
    assert cred.values == {"GITLAB_TOKEN": ISSUED}
    assert 800 < (cred.expires_at - datetime.now(UTC)).total_seconds() <= 900
    assert cred.revoke_handle["token_id"] == "77"
    assert ISSUED not in json.dumps(dict(cred.revoke_handle))


def test_group_tokens_and_revoke(mocked: Any) -> None:
    mocked.post(f"{GITLAB}/api/v4/groups/42/access_tokens", json=_created(5), status=201)
    mocked.delete(f"{GITLAB}/api/v4/groups/42/access_tokens/5", status=204)
    provider = _provider()
    cred = provider.issue(_request(project=None, group=42, env_var="CI_GROUP_TOKEN"))
    jsonschema.validate(json.loads(mocked.calls[0].request.body), DOCUMENTED_CREATE_BODY)
    assert set(cred.values) == {"CI_GROUP_TOKEN"}
    provider.revoke(cred.lease_id, cred.revoke_handle)
    assert mocked.calls[1].request.method == "DELETE"


def test_revoke_deletes_by_token_id_and_is_idempotent(mocked: Any) -> None:
    url = f"{GITLAB}/api/v4/projects/123/access_tokens/77"
    mocked.delete(url, status=204)
    mocked.delete(url, status=404, json={"message": "404 Not Found"})
    handle = {"kind": "project", "target": "123", "token_id": "77"}
    provider = _provider()
    provider.revoke("l1", handle)
    provider.revoke("l1", handle)
    assert [c.request.method for c in mocked.calls] == ["DELETE", "DELETE"]
    assert mocked.calls[0].request.headers["PRIVATE-TOKEN"] == ADMIN_TOKEN


def test_refusal_and_outage_fail_closed_without_tokens(mocked: Any) -> None:
    url = f"{GITLAB}/api/v4/projects/acme%2Fapi/access_tokens"
    mocked.post(url, status=403, json={"message": "403 Forbidden"})
    mocked.post(url, body=requests.ConnectionError("refused"))
    provider = _provider()
    with pytest.raises(ProviderError, match="403") as refused:
        provider.issue(_request())
    with pytest.raises(ProviderError, match="cannot reach GitLab") as down:
        provider.issue(_request())
    for info in (refused, down):
        assert ADMIN_TOKEN not in info.value.explain()
        assert info.value.exit_code == 85


def test_ttl_and_gitlab_day_granularity() -> None:
    late = datetime(2030, 5, 1, 23, 55, tzinfo=UTC)
    assert upstream_expiry(late, 900) == date(2030, 5, 3)  # 00:10 on the 2nd needs the 3rd
    early = datetime(2030, 5, 1, 8, 0, tzinfo=UTC)
    assert upstream_expiry(early, 900) == date(2030, 5, 2)  # tomorrow is GitLab's minimum


@settings(max_examples=200, deadline=None)
@given(
    st.datetimes(
        min_value=datetime(2020, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC)
    ),
    st.integers(min_value=60, max_value=24 * 3600),
)
def test_upstream_expiry_covers_the_lease_and_is_minimal(now: datetime, ttl: int) -> None:
    day = upstream_expiry(now, ttl)
    midnight = datetime.combine(day, time(0), UTC)
    assert midnight >= now + timedelta(seconds=ttl)
    assert day >= now.date() + timedelta(days=1)
    earlier = midnight - timedelta(days=1)
    assert earlier < now + timedelta(seconds=ttl) or day == now.date() + timedelta(days=1)


@pytest.mark.parametrize(
    ("settings", "config", "message"),
    [
        ({"group": 1}, {}, "exactly one of project or group"),
        ({"project": None}, {}, "exactly one of project or group"),
        ({"scopes": []}, {}, "scopes"),
        ({"scopes": ["sudo"]}, {}, "scopes.0"),
        ({"access_level": "owner"}, {}, "above the provider's max_access_level"),
        ({}, {"allowed_projects": ["acme/other"]}, "not in allowed_projects"),
        ({"expires_at": "2099-01-01"}, {}, "expires_at: Extra inputs"),
    ],
)
def test_grant_validation(settings: dict[str, Any], config: dict[str, Any], message: str) -> None:
    grant = {"project": "acme/api", "scopes": ["api"], "access_level": "developer", **settings}
    with pytest.raises(ConfigError, match=message):
        _provider(**config).validate_grant(grant)
