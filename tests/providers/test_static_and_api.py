"""The static provider, the TTL model, and the pinned public API of airlock.providers."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import airlock.providers
from airlock.errors import ConfigError
from airlock.providers import interface
from airlock.providers.interface import IssueRequest, TtlLimits, clamp_ttl
from airlock.providers.static import StaticProvider


def test_file_secrets_are_read_at_issue_time(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("first-value\n")
    provider = StaticProvider.from_config({"secrets": {"API_TOKEN": f"file:{secret}"}})
    request = IssueRequest("g", {"secrets": ["API_TOKEN"]}, "l1")
    assert provider.issue(request).values == {"API_TOKEN": "first-value"}
    secret.write_text("rotated-value\n")
    assert provider.issue(request).values == {"API_TOKEN": "rotated-value"}


def test_env_secrets_and_missing_sources(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DEPLOY_KEY", "from-env")
    provider = StaticProvider.from_config(
        {"secrets": {"DEPLOY_KEY": "env:DEPLOY_KEY", "GONE": "env:NOT_SET", "NOFILE": "file:/no"}}
    )
    assert provider.issue(IssueRequest("g", {"secrets": ["DEPLOY_KEY"]}, "l")).values == {
        "DEPLOY_KEY": "from-env"
    }
    with pytest.raises(ConfigError, match="NOT_SET is not set"):
        provider.issue(IssueRequest("g", {"secrets": ["GONE"]}, "l"))
    with pytest.raises(ConfigError, match="could not read secret file /no"):
        provider.issue(IssueRequest("g", {"secrets": ["NOFILE"]}, "l"))


def test_grants_must_name_defined_secrets() -> None:
    provider = StaticProvider.from_config({"secrets": {"A": "x" * 10}})
    with pytest.raises(ConfigError, match="does not define: B"):
        provider.validate_grant({"secrets": ["A", "B"]})
    with pytest.raises(ConfigError, match="secrets: List should have at least 1 item"):
        provider.validate_grant({"secrets": []})


def test_revoke_is_a_recorded_no_op(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="airlock.providers.static")
    provider = StaticProvider.from_config({"secrets": {"A": "x" * 10}})
    cred = provider.issue(IssueRequest("g", {"secrets": ["A"]}, "lrec", ttl_seconds=10**6))
    provider.revoke(cred.lease_id, cred.revoke_handle)
    assert "static lease lrec ended (secrets: A); revoke is a no-op" in caplog.text
    assert cred.ttl is not None
    assert cred.ttl.granted == 12 * 3600
    assert (cred.expires_at - datetime.now(UTC)).total_seconds() <= 12 * 3600


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(st.none(), st.integers(min_value=-10, max_value=10**6)),
    st.integers(min_value=1, max_value=5000),
    st.integers(min_value=0, max_value=50000),
)
def test_clamp_ttl_always_lands_inside_the_limits(
    requested: int | None, low: int, span: int
) -> None:
    limits = TtlLimits(minimum=low, maximum=low + span, default=900)
    decision = clamp_ttl(requested, limits)
    assert limits.minimum <= decision.granted <= limits.maximum
    asked = 900 if requested is None else requested
    assert decision.requested == asked
    assert (decision.reason is None) == (decision.granted == asked)


def test_public_api_is_pinned() -> None:
    assert sorted(airlock.providers.__all__) == [
        "CredentialProvider",
        "IssueRequest",
        "IssuedCredential",
        "ProviderError",
        "TtlDecision",
        "TtlLimits",
        "clamp_ttl",
        "get_provider",
        "provider_registry",
    ]
    for name in interface.__all__:
        assert hasattr(interface, name)
    assert issubclass(interface.ProviderError, airlock.errors.InfrastructureUnavailable)
