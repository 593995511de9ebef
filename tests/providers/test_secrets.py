"""No secret value in a repr, an exception, a traceback or a log line (DEBUG, every logger)."""

from __future__ import annotations

import hashlib
import logging
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import responses
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from tests.providers.conftest import RecordingMoto
from tests.providers.pg_app import ADMIN_PASSWORD, AppDatabase
from tests.providers.test_github import TOKENS_URL, _token_response

from airlock.errors import AirlockError
from airlock.providers import get_provider, provider_registry
from airlock.providers.aws import AwsProvider
from airlock.providers.github import GitHubProvider
from airlock.providers.gitlab import GitLabProvider
from airlock.providers.interface import IssuedCredential, IssueRequest
from airlock.providers.postgres import PostgresProvider
from airlock.providers.static import StaticProvider

pytestmark = pytest.mark.service


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


def assert_hidden(secrets: list[str], *texts: str) -> None:
    for secret in secrets:
        assert len(secret) >= 8, "a test secret must be long enough to be meaningful"
        for text in texts:
            assert secret not in text


def _error_texts(action: Callable[[], Any]) -> list[str]:
    with pytest.raises(AirlockError) as info:
        action()
    err = info.value
    return [str(err), repr(err), err.explain(), "".join(traceback.format_exception(err))]


def _cred_texts(cred: IssuedCredential) -> list[str]:
    return [repr(cred), str(cred), str(cred.revoke_handle), str(cred.fingerprints())]


def test_static(debug_logs: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    literal, in_file = "static-literal-SECRET-1", "static-file-SECRET-2"
    (tmp_path / "s").write_text(in_file + "\n")
    provider = StaticProvider.from_config(
        {"secrets": {"A": literal, "B": f"file:{tmp_path / 's'}", "C": "file:/nonexistent"}}
    )
    cred = provider.issue(IssueRequest("g", {"secrets": ["A", "B"]}, "l1"))
    assert cred.values == {"A": literal, "B": in_file}
    provider.revoke(cred.lease_id, cred.revoke_handle)
    assert "revoke is a no-op" in debug_logs.text
    errors = _error_texts(lambda: provider.issue(IssueRequest("g", {"secrets": ["C"]}, "l2")))
    bad_config = _error_texts(
        lambda: StaticProvider.from_config({"secrets": {"bad name": literal}})
    )
    assert_hidden(
        [literal, in_file],
        *_cred_texts(cred),
        repr(provider.__dict__),
        *errors,
        *bad_config,
        debug_logs.text,
    )


def test_postgres(debug_logs: pytest.LogCaptureFixture, app_db: AppDatabase) -> None:
    provider = PostgresProvider.from_config(app_db.provider_config())
    cred = provider.issue(IssueRequest("g", {"roles": ["app_ro"]}, "lsecretstest1"))
    provider.revoke(cred.lease_id, cred.revoke_handle)
    wrong = PostgresProvider.from_config(
        {"admin_dsn": app_db.cluster.dsn(app_db.admin, "WrongPassw0rd!", "appdb"), "host": "x"}
    )
    errors = _error_texts(lambda: wrong.issue(IssueRequest("g", {"roles": ["app_ro"]}, "l2")))
    secrets = [cred.values["PGPASSWORD"], ADMIN_PASSWORD, "WrongPassw0rd!"]
    assert_hidden(secrets, repr(cred), str(cred), str(cred.revoke_handle), *errors, debug_logs.text)
    assert_hidden([ADMIN_PASSWORD], repr(provider.__dict__))


def test_aws(
    debug_logs: pytest.LogCaptureFixture, sts_server: RecordingMoto, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    web_token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ3ZWItaWRlbnRpdHkifQ.U0VDUkVU"
    grant = {"role_arn": "arn:aws:iam::123456789012:role/x"}
    request = IssueRequest("g", grant, "l3", web_identity_token=web_token)
    provider = AwsProvider.from_config({"endpoint_url": sts_server.endpoint_url})
    cred = provider.issue(request)
    web = AwsProvider.from_config({"endpoint_url": sts_server.endpoint_url, "mode": "web_identity"})
    web_cred = web.issue(request)
    down = AwsProvider.from_config({"endpoint_url": "http://127.0.0.1:1", "mode": "web_identity"})
    errors = _error_texts(lambda: down.issue(request))
    secrets = [v for c in (cred, web_cred) for k, v in c.values.items() if "REGION" not in k]
    assert_hidden(
        [*secrets, web_token],
        *_cred_texts(cred),
        *_cred_texts(web_cred),
        repr(request),
        *errors,
        debug_logs.text,
    )


def test_github(debug_logs: pytest.LogCaptureFixture) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    seal_key = Fernet.generate_key().decode()
    config = {"app_id": 1, "installation_id": 4242, "private_key": pem, "token_seal_key": seal_key}
    provider = GitHubProvider.from_config(config)
    request = IssueRequest(
        "g", {"repositories": ["api"], "permissions": {"contents": "read"}}, "l4"
    )
    with responses.RequestsMock() as mocked:
        mocked.post(TOKENS_URL, json=_token_response(), status=201)
        mocked.post(TOKENS_URL, json={"message": "Bad credentials"}, status=401)
        mocked.post(TOKENS_URL, body=requests.ConnectionError("down"))
        cred = provider.issue(request)
        errors = _error_texts(lambda: provider.issue(request)) + _error_texts(
            lambda: provider.issue(request)
        )
    pem_body = pem.splitlines()[1]
    secrets = [cred.values["GITHUB_TOKEN"], pem_body, seal_key]
    assert_hidden(secrets, *_cred_texts(cred), *errors, debug_logs.text, repr(provider.__dict__))


def test_gitlab(debug_logs: pytest.LogCaptureFixture) -> None:
    admin, issued = "glpat-BrokerAdminToken-xyz", "glpat-IssuedToken-abc123"
    provider = GitLabProvider.from_config({"url": "https://gl.example", "token": admin})
    grant = {"project": 1, "scopes": ["read_api"], "access_level": "reporter"}
    request = IssueRequest("g", grant, "l5")
    url = "https://gl.example/api/v4/projects/1/access_tokens"
    with responses.RequestsMock() as mocked:
        mocked.post(url, json={"id": 9, "token": issued}, status=201)
        mocked.post(url, json={"message": "401 Unauthorized"}, status=401)
        cred = provider.issue(request)
        errors = _error_texts(lambda: provider.issue(request))
    assert_hidden(
        [admin, issued], *_cred_texts(cred), *errors, debug_logs.text, repr(provider.__dict__)
    )


def test_credential_repr_hides_values_and_fingerprints_are_sha256() -> None:
    cred = IssuedCredential("l", "g", "static", {"K": "value-SECRET-123"}, datetime.now(UTC))
    assert "value-SECRET-123" not in repr(cred)
    assert cred.fingerprints() == {"K": hashlib.sha256(b"value-SECRET-123").hexdigest()}


def test_registry_knows_every_provider() -> None:
    assert set(provider_registry()) == {"static", "postgres", "aws", "github", "gitlab"}
    assert get_provider("postgres") is PostgresProvider
    with pytest.raises(AirlockError, match="unknown credential provider 'vault'"):
        get_provider("vault")
