"""Loading broker.yaml: every problem reported with its YAML path and line, the committed
JSON Schema in sync with the models, durations, grants' provider settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airlock.errors import ConfigError, ExitCode
from airlock.policy.broker_config import (
    DEFAULT_STATE,
    broker_config_schema,
    load_broker_config,
    parse_broker_config,
    parse_duration,
)
from airlock.policy.trust import load_trust_policy

ROOT = Path(__file__).resolve().parents[2]
ISSUER = "issuers: [{name: github, url: https://token.actions.githubusercontent.com, audience: https://b.test}]\n"


def config_error(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_broker_config(text)
    assert caught.value.exit_code == ExitCode.USAGE
    return caught.value.message


def test_committed_schema_matches_the_models() -> None:
    committed = json.loads((ROOT / "docs" / "broker-config.schema.json").read_text())
    assert committed == broker_config_schema(), (
        "docs/broker-config.schema.json is stale: regenerate it with "
        "`airlock broker schema > docs/broker-config.schema.json`"
    )


@pytest.mark.parametrize("path", sorted((ROOT / "examples" / "broker").glob("*.yaml")))
def test_examples_load_and_compile(path: Path) -> None:
    assert load_trust_policy(path).rules


def test_defaults_and_provider_settings() -> None:
    config = parse_broker_config(
        ISSUER + "grants:\n  db: {provider: postgres, roles: [app_rw], database: app}\n"
    )
    grant = config.grants["db"]
    assert grant.ttl == 15 * 60
    assert grant.settings == {"roles": ["app_rw"], "database": "app"}
    assert config.state == DEFAULT_STATE
    assert config.limits.per_repository.rate == 60
    assert config.issuers[0].resolved_platform == "github"
    assert config.issuers[0].issuer_config().max_token_age == 600


@pytest.mark.parametrize(
    ("text", "seconds"), [("15m", 900), ("1h30m", 5400), ("90s", 90), (45, 45), ("12h", 43200)]
)
def test_durations(text: str | int, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "15", "m", "1d", "-5m", "1.5h", True])
def test_bad_durations(text: str | bool) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_each_problem_has_its_yaml_path_and_line() -> None:
    message = config_error(
        ISSUER
        + "grants:\n"
        + "  db: {provider: postgres, ttl: 13h}\n"
        + "  nope: {ttl: 5m}\n"
        + "rules:\n"
        + "  - id: r\n"
        + "    issuer: github\n"
        + "    claims: {repository_id: 1.5}\n"
        + "    grantz: [db]\n"
    )
    assert "grants.db.ttl (line 3)" in message
    assert "grants.nope.provider (line 4)" in message
    assert "rules[0].claims.repository_id (line 8)" in message
    assert "rules[0].grantz (line 9)" in message
    assert "Extra inputs are not permitted" in message


def test_duplicate_keys_are_refused() -> None:
    message = config_error(ISSUER + "grants:\n  db: {provider: a}\n  db: {provider: b}\n")
    assert "duplicate key 'db'" in message
    assert "line 4" in message


def test_insecure_issuers_are_refused_with_their_path() -> None:
    message = config_error(
        "issuers:\n"
        "  - {name: gh, url: http://token.example.com, audience: https://github.com/acme}\n"
    )
    assert "issuers[0]" in message
    assert "https://" in message
    assert "default audience" in message


def test_unknown_platform_must_be_named() -> None:
    message = config_error(
        "issuers: [{name: corp, url: https://sso.corp.example, audience: https://b.test}]\n"
    )
    assert "platform" in message
    config = parse_broker_config(
        "issuers: [{name: corp, url: https://sso.corp.example, audience: https://b.test, "
        "platform: gitlab}]\n"
    )
    assert config.issuers[0].resolved_platform == "gitlab"


def test_state_dsn_is_never_echoed() -> None:
    message = config_error(ISSUER + "state: mysql://admin:hunter2@db.internal/broker\n")
    assert "state" in message
    assert "hunter2" not in message


def test_provider_secrets_are_never_echoed() -> None:
    message = config_error(ISSUER + "providers:\n  Bad_Name: {token: s3cr3t-value}\n")
    assert "providers" in message
    assert "s3cr3t-value" not in message


@pytest.mark.parametrize(
    "text",
    ["[1, 2]", "issuers: [", "", "grants: {}\n"],
    ids=["list", "broken", "empty", "no-issuers"],
)
def test_unusable_documents(text: str) -> None:
    assert "broker config" in config_error(text)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read broker config"):
        load_broker_config(tmp_path / "absent.yaml")
