"""The GitHub provider through `responses`, every request checked against GitHub's OpenAPI."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
import requests
import responses
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from openapi_core.contrib.requests import RequestsOpenAPIRequest

from airlock.errors import ConfigError
from airlock.providers.github import GitHubProvider
from airlock.providers.interface import IssueRequest, ProviderError

API = "https://api.github.com"
# PyGithub spells the default port out (https://api.github.com:443/...): accept both forms.
TOKENS_URL = re.compile(r"https://api\.github\.com(:443)?/app/installations/4242/access_tokens")
REVOKE_URL = re.compile(r"https://api\.github\.com(:443)?/installation/token")
TOKEN = "ghs_16C7e42F292c6912E7710c838347Ae178B4a"  # shape of a real token, not a real one


@pytest.fixture(scope="module")
def app_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def config(app_key: rsa.RSAPrivateKey) -> dict[str, Any]:
    pem = app_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return {
        "app_id": 12345,
        "installation_id": 4242,
        "private_key": pem,
        "owner": "acme",
        "token_seal_key": Fernet.generate_key().decode(),
    }


@pytest.fixture
def mocked() -> Any:
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        yield rsps


def _token_response(**overrides: Any) -> dict[str, Any]:
    body = {
        "token": TOKEN,
        "expires_at": (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "permissions": {"contents": "write", "metadata": "read"},
        "repository_selection": "selected",
        "repositories": [{"id": 1, "name": "api", "full_name": "acme/api"}],
    }
    return {**body, **overrides}


def _request(ttl: int = 900, **settings: Any) -> IssueRequest:
    grant = {"repositories": ["acme/api"], "permissions": {"contents": "write"}, **settings}
    return IssueRequest("gh-contents-write", grant, "l00aa11bb22cc33dd44ee", ttl)


def _validate(openapi: Any, call: Any) -> None:
    """Check method, path, headers and body against the operation in GitHub's description."""
    sent = call.request.copy()
    sent.url = sent.url.replace(f"{API}:443/", f"{API}/", 1)  # the spec's server has no port
    openapi.validate_request(RequestsOpenAPIRequest(sent))


def test_issue_sends_a_narrowed_request_signed_by_the_app(
    config: dict[str, Any], app_key: rsa.RSAPrivateKey, mocked: Any, github_openapi: Any
) -> None:
    mocked.post(TOKENS_URL, json=_token_response(), status=201)
    cred = GitHubProvider.from_config(config).issue(_request())
    (call,) = mocked.calls
    _validate(github_openapi, call)
    assert json.loads(call.request.body) == {
        "repositories": ["api"],
        "permissions": {"contents": "write"},
    }
    scheme, _, token = call.request.headers["Authorization"].partition(" ")
    assert scheme.lower() == "bearer"
    claims = jwt.decode(token, app_key.public_key(), algorithms=["RS256"])
    assert str(claims["iss"]) == "12345"
    assert claims["exp"] - claims["iat"] <= 600
    assert cred.values == {"GITHUB_TOKEN": TOKEN}
    assert 800 < (cred.expires_at - datetime.now(UTC)).total_seconds() <= 900
    assert TOKEN not in json.dumps(dict(cred.revoke_handle))


def test_repository_ids_and_custom_env_var(
    config: dict[str, Any], mocked: Any, github_openapi: Any
) -> None:
    mocked.post(TOKENS_URL, json=_token_response(repositories=[]), status=201)
    request = _request(repositories=[], repository_ids=[1296269], env_var="GH_TOKEN")
    cred = GitHubProvider.from_config(config).issue(request)
    _validate(github_openapi, mocked.calls[0])
    assert json.loads(mocked.calls[0].request.body)["repository_ids"] == [1296269]
    assert set(cred.values) == {"GH_TOKEN"}


def test_revoke_deletes_the_token_with_itself(
    config: dict[str, Any], mocked: Any, github_openapi: Any
) -> None:
    mocked.post(TOKENS_URL, json=_token_response(), status=201)
    mocked.delete(REVOKE_URL, status=204)
    provider = GitHubProvider.from_config(config)
    cred = provider.issue(_request())
    other_replica = GitHubProvider.from_config(config)  # same seal key, another process
    other_replica.revoke(cred.lease_id, cred.revoke_handle)
    delete = mocked.calls[1]
    _validate(github_openapi, delete)
    assert delete.request.method == "DELETE"
    assert delete.request.headers["Authorization"] == f"token {TOKEN}"


def test_revoke_is_idempotent(config: dict[str, Any], mocked: Any) -> None:
    mocked.post(TOKENS_URL, json=_token_response(), status=201)
    mocked.delete(REVOKE_URL, status=401, json={"message": "Bad credentials"})
    provider = GitHubProvider.from_config(config)
    cred = provider.issue(_request())
    provider.revoke(cred.lease_id, cred.revoke_handle)  # 401: already gone, not an error
    assert [c.request.method for c in mocked.calls][-1] == "DELETE"


def test_revoke_with_another_seal_key_says_what_to_fix(config: dict[str, Any], mocked: Any) -> None:
    mocked.post(TOKENS_URL, json=_token_response(), status=201)
    cred = GitHubProvider.from_config(config).issue(_request())
    stranger = GitHubProvider.from_config({**config, "token_seal_key": Fernet.generate_key()})
    with pytest.raises(ProviderError, match="sealed token") as info:
        stranger.revoke(cred.lease_id, cred.revoke_handle)
    assert "token_seal_key" in info.value.hint


def test_a_broader_token_than_asked_is_revoked_and_refused(
    config: dict[str, Any], mocked: Any
) -> None:
    mocked.post(TOKENS_URL, json=_token_response(repository_selection="all"), status=201)
    mocked.delete(REVOKE_URL, status=204)
    with pytest.raises(ProviderError, match="broader"):
        GitHubProvider.from_config(config).issue(_request())
    assert mocked.calls[1].request.method == "DELETE"


def test_github_refusal_fails_closed(config: dict[str, Any], mocked: Any) -> None:
    message = "The permissions requested are not granted to this installation."
    mocked.post(TOKENS_URL, json={"message": message}, status=422)
    with pytest.raises(ProviderError, match="422 The permissions requested") as info:
        GitHubProvider.from_config(config).issue(_request())
    assert info.value.exit_code == 85


def test_unreachable_github_fails_closed(config: dict[str, Any], mocked: Any) -> None:
    mocked.post(TOKENS_URL, body=requests.ConnectionError("connection refused"))
    with pytest.raises(ProviderError, match="cannot reach GitHub"):
        GitHubProvider.from_config(config).issue(_request())


def test_ttl_is_capped_at_githubs_one_hour(config: dict[str, Any], mocked: Any) -> None:
    mocked.post(TOKENS_URL, json=_token_response(), status=201)
    cred = GitHubProvider.from_config(config).issue(_request(ttl=7200))
    assert cred.ttl is not None
    assert cred.ttl.granted == 3600
    assert "maximum" in (cred.ttl.reason or "")
    assert cred.expires_at <= datetime.now(UTC) + timedelta(hours=1)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"repositories": []}, "name the repositories"),
        ({"permissions": {}}, "permissions"),
        ({"permissions": {"contents": "delete"}}, "permissions.contents"),
        ({"repositories": ["other/api"]}, "outside the installation's owner acme"),
        ({"repositories": ["acme/a", "other/b"]}, "one owner"),
        ({"repositories": ["../etc"]}, "repositories.0"),
        ({"scopes": ["repo"]}, "scopes: Extra inputs"),
    ],
)
def test_grant_validation(config: dict[str, Any], settings: dict[str, Any], message: str) -> None:
    provider = GitHubProvider.from_config(config)
    grant = {"repositories": ["acme/api"], "permissions": {"contents": "read"}, **settings}
    with pytest.raises(ConfigError, match=message):
        provider.validate_grant(grant)


def test_bad_private_key_and_seal_key_are_config_errors(config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="Fernet key"):
        GitHubProvider.from_config({**config, "token_seal_key": "short"})
    provider = GitHubProvider.from_config({**config, "private_key": "not a pem"})
    with pytest.raises(ConfigError, match="PEM private key") as info:
        provider.issue(_request())
    assert "not a pem" not in info.value.explain()


def test_the_openapi_check_is_not_vacuous(github_openapi: Any) -> None:
    from openapi_core.exceptions import OpenAPIError

    url = f"{API}/app/installations/4242/access_tokens"
    bad = requests.Request("POST", url, json={"permissions": {"contents": "delete"}}).prepare()
    with pytest.raises(OpenAPIError):
        github_openapi.validate_request(RequestsOpenAPIRequest(bad))
