"""The policy models: defaults, immutability, the public API, digests and env globs."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

import airlock.policy
from airlock.policy import (
    DEFAULT_POLICY,
    CaptureSettings,
    EnvironmentPolicy,
    MaskPattern,
    MaskPolicy,
    Policy,
    env_pattern_matches,
    parse_policy,
)


def test_public_api_is_pinned() -> None:
    assert sorted(airlock.policy.__all__) == [
        "ApprovalsPolicy",
        "CaptureSettings",
        "DEFAULT_POLICY",
        "Decision",
        "EnvironmentPolicy",
        "GatewayConfig",
        "GuardrailDefaults",
        "GuardrailRule",
        "HttpCredential",
        "HttpGatewayConfig",
        "HttpMatch",
        "HttpRequestInfo",
        "MAX_POLICY_BYTES",
        "MaskPattern",
        "MaskPolicy",
        "NetworkPolicy",
        "Policy",
        "PolicyError",
        "PolicyProblem",
        "PostgresCredential",
        "PostgresGatewayConfig",
        "PostgresUpstream",
        "SandboxFilesystem",
        "SandboxPolicy",
        "SqlMatch",
        "SqlStatement",
        "builtin_rule_ids",
        "decide_http",
        "decide_sql",
        "env_pattern_matches",
        "load_policy",
        "parse_policy",
        "policy_json_schema",
        "rules_for_gateway",
    ]


def test_default_policy_fails_closed_and_masks() -> None:
    assert DEFAULT_POLICY.version == 1
    assert DEFAULT_POLICY.capture == CaptureSettings(exec="required", pty="auto")
    assert DEFAULT_POLICY.mask == MaskPolicy(env=(), patterns=(), correlate="none", builtin=True)
    assert DEFAULT_POLICY.environment == EnvironmentPolicy(remove=(), keep_masked_vars=True)


def test_default_policy_is_the_validated_defaults() -> None:
    # DEFAULT_POLICY is built without validation (start-up speed); it must be Policy() exactly,
    # and its pinned digest (policy.default.DEFAULT_DIGEST) that of Policy(): update both with a
    # default.
    validated = Policy()
    assert validated == DEFAULT_POLICY
    assert DEFAULT_POLICY.model_fields_set == validated.model_fields_set == set()
    assert DEFAULT_POLICY.model_dump() == validated.model_dump()
    assert DEFAULT_POLICY.digest() == validated.digest()
    assert hash(DEFAULT_POLICY) == hash(validated)


@pytest.mark.parametrize("text", ["", "   \n", "# only a comment\n", "{}", "---\n"])
def test_empty_documents_mean_the_defaults(text: str) -> None:
    assert parse_policy(text) == DEFAULT_POLICY


def test_models_are_frozen() -> None:
    with pytest.raises(ValidationError):
        DEFAULT_POLICY.capture = CaptureSettings(exec="off")  # type: ignore[misc]
    with pytest.raises(ValidationError):
        DEFAULT_POLICY.mask.builtin = False  # type: ignore[misc]


def test_models_refuse_unknown_keys() -> None:
    with pytest.raises(ValidationError):
        MaskPattern.model_validate({"id": "x", "regex": "x+", "flags": "i"})


def test_sections_added_later_are_refused_today() -> None:
    for section in ("archive",):
        with pytest.raises(airlock.policy.PolicyError, match=f"unknown key '{section}'"):
            parse_policy(f"{section}: {{}}\n")


def test_digest_ignores_comments_order_and_spelt_out_defaults() -> None:
    short = parse_policy("mask: {env: [A]}\n")
    long = parse_policy(
        "# comment\nenvironment: {keep_masked_vars: true}\n"
        "mask:\n  builtin: true\n  env: [A]\nversion: 1\ncapture: {exec: required}\n"
    )
    assert short.digest() == long.digest()
    assert short.digest().startswith("sha256:")
    assert len(short.digest()) == len("sha256:") + 64
    assert parse_policy("mask: {env: [B]}").digest() != short.digest()


def test_a_policy_round_trips_through_its_json() -> None:
    policy = parse_policy(
        "mask:\n  env: [A]\n  patterns: [{id: t, regex: 't_[0-9]+', max_len: 9}]\n"
        "environment: {remove: ['V_*']}\n"
    )
    assert Policy.model_validate_json(policy.model_dump_json()) == policy


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("VAULT_*", "VAULT_TOKEN", True),
        ("VAULT_*", "VAULT_", True),
        ("VAULT_*", "VAULT", False),
        ("VAULT_*", "MY_VAULT_TOKEN", False),
        ("TOKEN", "TOKEN", True),
        ("TOKEN", "TOKEN2", False),
        ("TOKEN", "token", False),
        ("*", "ANYTHING", True),
    ],
)
def test_env_pattern_matches(pattern: str, name: str, matches: bool) -> None:
    assert env_pattern_matches(pattern, name) is matches


def test_environment_policy_removes() -> None:
    env = parse_policy("environment: {remove: [MY_ADMIN_TOKEN, 'VAULT_*']}").environment
    assert env.removes("VAULT_ADDR")
    assert env.removes("MY_ADMIN_TOKEN")
    assert not env.removes("MY_ADMIN_TOKEN_2")
    assert not env.removes("PATH")
