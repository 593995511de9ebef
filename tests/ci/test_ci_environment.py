"""SENSITIVE_CI_VARIABLES and agent_environment: what the agent's process can and cannot see."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from airlock.ci import (
    SENSITIVE_CI_VARIABLES,
    agent_environment,
    is_sensitive_variable,
    removed_names,
)
from airlock.policy import DEFAULT_POLICY, parse_policy


def _secret_names(environ: dict[str, str]) -> set[str]:
    return {name for name, value in environ.items() if "FIXTURE-SECRET" in value}


def test_github_job_credentials_are_withheld_by_default(github_env: dict[str, str]) -> None:
    seen = agent_environment(github_env, DEFAULT_POLICY)
    for name in (
        "ACTIONS_ID_TOKEN_REQUEST_URL",
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
        "ACTIONS_RUNTIME_TOKEN",
        "ACTIONS_CACHE_URL",
        "GITHUB_ENV",
        "GITHUB_PATH",
    ):
        assert name not in seen
    # The policy decides about the workflow's own secrets; the step-local files stay usable.
    assert {"GITHUB_TOKEN", "DATABASE_PASSWORD", "GITHUB_OUTPUT", "GITHUB_STEP_SUMMARY"} <= set(
        seen
    )
    assert _secret_names(seen) == {"GITHUB_TOKEN", "DATABASE_PASSWORD"}


def test_gitlab_job_token_in_every_disguise_is_withheld(gitlab_env: dict[str, str]) -> None:
    seen = agent_environment(gitlab_env, DEFAULT_POLICY)
    leaked = [v for v in seen.values() if "glcbt-64_jobtoken" in v]
    assert leaked == []
    # AIRLOCK_ID_TOKEN (the OIDC token Airlock exchanges) is always withheld too.
    assert _secret_names(seen) == {"DATABASE_PASSWORD"}
    assert seen["CI_PROJECT_ID"] == gitlab_env["CI_PROJECT_ID"]


def test_a_policy_can_withhold_everything_else(gitlab_env: dict[str, str]) -> None:
    policy = parse_policy(
        "mask: {env: [DATABASE_PASSWORD]}\n"
        "environment: {remove: [AIRLOCK_ID_*], keep_masked_vars: false}\n"
    )
    seen = agent_environment(gitlab_env, policy)
    assert _secret_names(seen) == set()
    assert "DATABASE_PASSWORD" in removed_names(gitlab_env, policy)


def test_masked_vars_stay_visible_by_default(github_env: dict[str, str]) -> None:
    policy = parse_policy("mask: {env: [DATABASE_PASSWORD]}\n")
    assert agent_environment(github_env, policy)["DATABASE_PASSWORD"].startswith("FIXTURE-")


def test_removed_names_lists_names_sorted_and_input_is_not_changed(
    github_env: dict[str, str],
) -> None:
    before = dict(github_env)
    names = removed_names(github_env, parse_policy("environment: {remove: [GITHUB_TOKEN]}"))
    assert names == sorted(names)
    assert "GITHUB_TOKEN" in names
    assert "ACTIONS_ID_TOKEN_REQUEST_TOKEN" in names
    assert github_env == before


@pytest.mark.parametrize(
    ("name", "sensitive"),
    [
        ("CI_JOB_JWT", True),
        ("CI_JOB_JWT_V1", True),
        ("CI_JOB_JWT_V2", True),
        ("CI_JOB_JW", False),
        ("AIRLOCK_BROKER_TOKEN", True),
        ("AIRLOCK_BROKER_TOKEN_FILE", True),
        ("AIRLOCK_BROKER_URL", False),
        ("AIRLOCK_KEY", True),
        ("AIRLOCK_SESSIONS", False),
        ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", True),
        ("XACTIONS_ID_TOKEN_REQUEST_TOKEN", False),
        ("actions_id_token_request_token", False),
        ("GITHUB_OUTPUT", False),
    ],
)
def test_is_sensitive_variable(name: str, sensitive: bool) -> None:
    assert is_sensitive_variable(name) is sensitive


def test_sensitive_entries_use_the_policy_remove_syntax() -> None:
    # One syntax for both lists: each entry must be valid in `environment.remove`.
    policy = parse_policy(
        "environment:\n  remove:\n" + "".join(f"    - {n}\n" for n in SENSITIVE_CI_VARIABLES)
    )
    assert policy.environment.remove == SENSITIVE_CI_VARIABLES


def test_a_real_child_process_does_not_see_withheld_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "FIXTURE-SECRET-oidc")
    monkeypatch.setenv("CI_JOB_JWT_V2", "FIXTURE-SECRET-jwt")
    monkeypatch.setenv("VAULT_TOKEN", "FIXTURE-SECRET-vault")
    monkeypatch.setenv("AIRLOCK_TEST_VISIBLE", "visible")
    policy = parse_policy("environment: {remove: ['VAULT_*']}")
    done = subprocess.run(
        [sys.executable, "-c", "import os, json; print(json.dumps(dict(os.environ)))"],
        env=agent_environment(os.environ, policy),
        capture_output=True,
        text=True,
        check=True,
    )
    assert "FIXTURE-SECRET" not in done.stdout
    assert '"AIRLOCK_TEST_VISIBLE": "visible"' in done.stdout
