"""The public API of airlock.oidc and the trust policy modules is pinned."""

from __future__ import annotations

import airlock.oidc
from airlock.oidc import errors
from airlock.policy import broker_config, trust


def test_oidc_public_names() -> None:
    assert sorted(airlock.oidc.__all__) == sorted(
        [
            "ALLOWED_ALGORITHMS",
            "DEFAULT_GITLAB_VARIABLE",
            "DEFAULT_MAX_TOKEN_BYTES",
            "AlgorithmNotAllowed",
            "BadAudience",
            "BadSignature",
            "InMemoryReplayCache",
            "IssuerConfig",
            "IssuerNotAllowed",
            "IssuerUnavailable",
            "JWKSCache",
            "OIDCError",
            "ReplayCache",
            "SigningKey",
            "TokenMalformed",
            "TokenNotCurrent",
            "TokenReplayed",
            "TokenVerifier",
            "UnknownSigningKey",
            "VerifiedToken",
            "acquire_github_token",
            "acquire_gitlab_token",
            "acquire_token",
            "detect_platform",
        ]
    )
    for name in airlock.oidc.__all__:
        assert hasattr(airlock.oidc, name)


def test_policy_public_names() -> None:
    for module in (broker_config, trust, errors):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"
    assert {"TrustPolicy", "Decision", "compile_trust_policy"} <= set(trust.__all__)
    assert {"BrokerConfig", "load_broker_config", "broker_config_schema"} <= set(
        broker_config.__all__
    )


def test_every_reason_code_has_a_public_message() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert cls.reason in errors._PUBLIC
