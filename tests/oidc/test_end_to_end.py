"""A real token from the test issuer, verified, then judged by the trust policy: the path the
broker's exchange endpoint takes."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest
from tests.oidc.conftest import AUDIENCE
from tests.support.oidc_issuer import OIDCIssuer

from airlock.oidc import JWKSCache, OIDCError, TokenVerifier
from airlock.policy.broker_config import parse_broker_config
from airlock.policy.trust import TrustPolicy, compile_trust_policy


def broker_policy(issuer: OIDCIssuer) -> TrustPolicy:
    text = f"""
    issuers:
      - {{name: github, url: "{issuer.url}", audience: "{AUDIENCE}", platform: github}}
    grants:
      db-rw: {{provider: postgres, roles: [app_rw]}}
      gh-write: {{provider: github, permissions: {{contents: write}}}}
    rules:
      - id: api-main
        issuer: github
        claims:
          repository_id: "123456"
          repository_owner_id: "7890"
          ref: refs/heads/main
          event_name: [push, workflow_dispatch]
          job_workflow_ref: "acme/api/.github/workflows/*.yml@refs/heads/main"
        grants: [db-rw, gh-write]
    """
    return compile_trust_policy(parse_broker_config(textwrap.dedent(text)))


def exchange(issuer: OIDCIssuer, token: str, grants: list[str]) -> tuple[bool, str]:
    policy = broker_policy(issuer)
    keys = JWKSCache()
    try:
        verified = TokenVerifier(policy.issuer_configs(), keys=keys).verify(token)
    finally:
        keys.close()
    decision = policy.evaluate(verified.issuer, verified.claims, grants)
    return decision.allowed, decision.reason_detail


def test_a_good_job_gets_what_it_asked_within_the_ceiling(oidc_issuer: OIDCIssuer) -> None:
    token = oidc_issuer.mint(oidc_issuer.github_claims(AUDIENCE))
    allowed, detail = exchange(oidc_issuer, token, ["gh-write"])
    assert allowed, detail


@pytest.mark.parametrize(
    ("overrides", "claim"),
    [
        ({"event_name": "pull_request_target"}, "allow_events"),
        (
            {
                "event_name": "pull_request",
                "head_repository": "mallory/api",
                "head_repository_id": "666",
            },
            "'fork'",
        ),
        ({"repository_id": "424242"}, "repository_id"),  # renamed / re-created repository
        ({"repository_id": 123456}, "not a string"),
        (
            {"job_workflow_ref": "mallory/x/.github/workflows/a.yml@refs/heads/main"},
            "job_workflow_ref",
        ),
        (
            {"job_workflow_ref": "acme/api/.github/workflows/x/a.yml@refs/heads/main"},
            "job_workflow_ref",
        ),
    ],
    ids=[
        "pull_request_target",
        "fork-pr",
        "renamed-repo",
        "id-wrong-type",
        "foreign-workflow",
        "glob-crossing-slash",
    ],
)
def test_valid_tokens_of_the_wrong_job_are_denied_by_policy(
    oidc_issuer: OIDCIssuer, overrides: dict[str, Any], claim: str
) -> None:
    token = oidc_issuer.mint(oidc_issuer.github_claims(AUDIENCE, **overrides))
    allowed, detail = exchange(oidc_issuer, token, ["db-rw"])
    assert not allowed
    assert claim in detail


def test_policy_issuer_allowlist_is_the_verifiers(
    oidc_issuer: OIDCIssuer, attacker: OIDCIssuer
) -> None:
    token = attacker.mint(attacker.github_claims(AUDIENCE))
    with pytest.raises(OIDCError) as caught:
        exchange(oidc_issuer, token, ["db-rw"])
    assert caught.value.reason == "issuer-not-allowed"
    assert sum(attacker.hits.values()) == 0


def test_gitlab_token_through_verifier_and_policy(oidc_issuer: OIDCIssuer) -> None:
    text = f"""
    issuers:
      - {{name: gitlab, url: "{oidc_issuer.url}", audience: "{AUDIENCE}", platform: gitlab}}
    grants: {{db-ro: {{provider: postgres, roles: [app_ro]}}}}
    rules:
      - id: gl
        issuer: gitlab
        claims:
          project_id: "20"
          ref_protected: true
          ci_config_ref_uri: "*/acme/api//.gitlab-ci.yml@refs/heads/main"
        grants: [db-ro]
    """
    policy = compile_trust_policy(parse_broker_config(textwrap.dedent(text)))
    keys = JWKSCache()
    try:
        verifier = TokenVerifier(policy.issuer_configs(), keys=keys)
        good = verifier.verify(oidc_issuer.mint(oidc_issuer.gitlab_claims(AUDIENCE)))
        mr = verifier.verify(
            oidc_issuer.mint(
                oidc_issuer.gitlab_claims(AUDIENCE, pipeline_source="merge_request_event")
            )
        )
    finally:
        keys.close()
    assert policy.evaluate("gitlab", good.claims, ["db-ro"]).grants == ("db-ro",)
    assert not policy.evaluate("gitlab", mr.claims, ["db-ro"]).allowed
