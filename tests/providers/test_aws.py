"""The AWS provider against a real moto server, with a real boto3 client on both sides."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path

import boto3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.providers.conftest import RecordingMoto

from airlock.errors import ConfigError
from airlock.providers.aws import AwsProvider, session_name, session_tags
from airlock.providers.interface import IssueRequest, ProviderError

pytestmark = pytest.mark.service

ROLE = "arn:aws:iam::123456789012:role/deploy"
STATEMENTS = [{"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": "arn:aws:s3:::acme/*"}]


@pytest.fixture
def moto_creds(monkeypatch: pytest.MonkeyPatch) -> None:
    """The broker's own (fake) AWS identity for assume_role mode."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")


def _request(ttl: int = 900, **settings: object) -> IssueRequest:
    return IssueRequest(
        grant_name="deploy",
        settings={"role_arn": ROLE, "statements": STATEMENTS, **settings},
        lease_id="l0123456789abcdef0123",
        ttl_seconds=ttl,
        session_name="airlock-acme/api-4711-1",
        tags={"repository": "acme/api", "run_id": "4711", "actor": "octo cat"},
    )


def _provider(sts: RecordingMoto, **config: object) -> AwsProvider:
    return AwsProvider.from_config({"endpoint_url": sts.endpoint_url, **config})


@pytest.mark.usefixtures("moto_creds")
def test_assume_role_sends_policy_duration_name_and_tags(sts_server: RecordingMoto) -> None:
    provider = _provider(sts_server)
    sts_server.start_recording()
    cred = provider.issue(_request())
    (sent,) = sts_server.sent()
    assert sent["Action"] == ["AssumeRole"]
    assert sent["RoleArn"] == [ROLE]
    assert sent["RoleSessionName"] == ["airlock-acme-api-4711-1"]
    assert sent["DurationSeconds"] == ["900"]
    policy = json.loads(sent["Policy"][0])
    assert policy == {"Version": "2012-10-17", "Statement": STATEMENTS}
    tags = {sent[f"Tags.member.{i}.Key"][0]: sent[f"Tags.member.{i}.Value"][0] for i in (1, 2, 3)}
    assert tags == {"repository": "acme/api", "run_id": "4711", "actor": "octo cat"}
    assert set(cred.values) >= {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
    }
    assert cred.revoke_handle["assumed_role_arn"].endswith(
        ":assumed-role/deploy/airlock-acme-api-4711-1"
    )
    remaining = (cred.expires_at - datetime.now(UTC)).total_seconds()
    assert 800 < remaining <= 900


@pytest.mark.usefixtures("moto_creds")
def test_issued_credentials_work_against_sts(sts_server: RecordingMoto) -> None:
    cred = _provider(sts_server).issue(_request())
    client = boto3.client(
        "sts",
        endpoint_url=sts_server.endpoint_url,
        region_name=cred.values["AWS_REGION"],
        aws_access_key_id=cred.values["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=cred.values["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=cred.values["AWS_SESSION_TOKEN"],
    )
    assert client.get_caller_identity()["Arn"] == cred.revoke_handle["assumed_role_arn"]


@pytest.mark.usefixtures("moto_creds")
@pytest.mark.parametrize(
    ("ttl", "role_max", "sent", "reason"),
    [
        (60, None, "900", "minimum"),
        (900, None, "900", None),
        (1800, None, "1800", None),
        (7200, None, "3600", "maximum"),
        (7200, 7200, "7200", None),
        (50000, 43200, "43200", "maximum"),
    ],
)
def test_ttl_is_clamped_to_sts_and_role_limits(
    sts_server: RecordingMoto, ttl: int, role_max: int | None, sent: str, reason: str | None
) -> None:
    provider = _provider(sts_server)
    extra = {"max_session_seconds": role_max} if role_max else {}
    sts_server.start_recording()
    cred = provider.issue(_request(ttl, **extra))
    assert sts_server.sent()[0]["DurationSeconds"] == [sent]
    assert cred.ttl is not None
    assert cred.ttl.granted == int(sent)
    assert (cred.ttl.reason is None) == (reason is None)
    if reason:
        assert reason in (cred.ttl.reason or "")


def test_web_identity_mode_sends_the_callers_token_unsigned_and_no_tags(
    sts_server: RecordingMoto,
) -> None:
    provider = _provider(sts_server, mode="web_identity")
    token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJyZXBvOmFjbWUvYXBpIn0.c2ln"
    request = dataclasses.replace(_request(), web_identity_token=token)
    assert token not in repr(request)
    sts_server.start_recording()
    cred = provider.issue(request)
    (sent,) = sts_server.sent()
    assert sent["Action"] == ["AssumeRoleWithWebIdentity"]
    assert sent["WebIdentityToken"] == [token]
    assert json.loads(sent["Policy"][0])["Statement"] == STATEMENTS
    assert not any(key.startswith("Tags") for key in sent)
    assert cred.values["AWS_SESSION_TOKEN"]


def test_web_identity_token_file(sts_server: RecordingMoto, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("eyJ.file.token\n")
    provider = _provider(sts_server, mode="web_identity", web_identity_token_file=str(token_file))
    sts_server.start_recording()
    provider.issue(_request())
    assert sts_server.sent()[0]["WebIdentityToken"] == ["eyJ.file.token"]


def test_web_identity_without_token_is_a_config_error(sts_server: RecordingMoto) -> None:
    with pytest.raises(ConfigError, match="no token"):
        _provider(sts_server, mode="web_identity").issue(_request())


@pytest.mark.usefixtures("moto_creds")
def test_unreachable_sts_fails_closed() -> None:
    provider = AwsProvider.from_config({"endpoint_url": "http://127.0.0.1:1"})
    with pytest.raises(ProviderError, match="cannot call STS") as info:
        provider.issue(_request())
    assert info.value.exit_code == 85


def test_grant_validation() -> None:
    provider = AwsProvider.from_config({"allowed_role_arns": [ROLE]})
    provider.validate_grant({"role_arn": ROLE})
    with pytest.raises(ConfigError, match="allowed_role_arns"):
        provider.validate_grant({"role_arn": "arn:aws:iam::123456789012:role/admin"})
    with pytest.raises(ConfigError, match="role_arn"):
        provider.validate_grant({"role_arn": "not-an-arn"})
    with pytest.raises(ConfigError, match="Effect must be Allow or Deny"):
        provider.validate_grant(
            {"role_arn": ROLE, "statements": [{"Action": "*", "Resource": "*"}]}
        )
    huge = [{"Effect": "Allow", "Action": [f"s3:Get{i}" for i in range(300)], "Resource": "*"}]
    with pytest.raises(ConfigError, match="longer than 2048"):
        provider.validate_grant({"role_arn": ROLE, "statements": huge})


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_session_names_are_always_valid_for_sts(raw: str) -> None:
    name = session_name(raw)
    assert 2 <= len(name) <= 64
    assert all(c.isascii() and (c.isalnum() or c in "_+=,.@-") for c in name)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=200), st.text(max_size=400), max_size=60))
def test_session_tags_respect_sts_limits(tags: dict[str, str]) -> None:
    out = session_tags(tags)
    assert len(out) <= 50
    for tag in out:
        assert 1 <= len(tag["Key"]) <= 128
        assert len(tag["Value"]) <= 256
