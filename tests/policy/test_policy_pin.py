"""airlock.policy.pin: which events need a pinned policy, how a policy value and a pin read."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from airlock.errors import UsageError
from airlock.policy.pin import (
    TRUSTED_WORKFLOW_EVENTS,
    PolicyPinError,
    load_session_policy,
    parse_pin,
    pin_required_reason,
    split_policy_value,
)


def test_the_events_that_run_the_base_branch_workflow_need_a_pin() -> None:
    assert {"pull_request_target", "issue_comment", "workflow_run"} == TRUSTED_WORKFLOW_EVENTS
    for event in TRUSTED_WORKFLOW_EVENTS:
        assert event in (pin_required_reason({"GITHUB_EVENT_NAME": event}) or "")
    # the PR's own merge ref's workflow: its author writes the workflow, pin included
    for event in ("pull_request", "pull_request_review", "pull_request_review_comment", "push"):
        assert pin_required_reason({"GITHUB_EVENT_NAME": event}) is None
    assert pin_required_reason({"AIRLOCK_REQUIRE_POLICY_PIN": "true"}) is not None
    assert pin_required_reason({"AIRLOCK_REQUIRE_POLICY_PIN": "false"}) is None


def test_a_value_with_a_newline_is_inline_and_anything_else_a_path() -> None:
    assert split_policy_value("capture: {exec: off}\n") == (None, "capture: {exec: off}\n")
    assert split_policy_value(" airlock.yaml ") == (Path("airlock.yaml"), None)
    assert split_policy_value("") == (None, None) and split_policy_value(None) == (None, None)


def test_a_pin_is_64_hex_digits_with_an_optional_prefix() -> None:
    digest = "AB" * 32
    assert parse_pin(digest) == parse_pin(f"sha256:{digest}") == digest.lower()
    assert parse_pin("  ") is None
    for bad in ("abc", "sha512:" + digest, digest + "0"):
        with pytest.raises(UsageError, match="64 hex digits"):
            parse_pin(bad)


def test_the_pin_is_checked_over_the_bytes_that_are_parsed(tmp_path: Path) -> None:
    path = tmp_path / "airlock.yaml"
    path.write_bytes(b"capture: {exec: best_effort}\n")
    pin = hashlib.sha256(path.read_bytes()).hexdigest()
    env = {"GITHUB_EVENT_NAME": "pull_request_target"}
    policy, source = load_session_policy(path, pin=pin, environ=env)
    assert policy.capture.exec == "best_effort" and source.origin == "pinned"
    path.write_bytes(b"capture: {exec: off}\n")
    with pytest.raises(PolicyPinError, match="does not match"):
        load_session_policy(path, pin=pin, environ={})
    with pytest.raises(PolicyPinError, match="inline the policy or pin it"):
        load_session_policy(path, environ=env)
    with pytest.raises(UsageError, match="no policy file is given"):
        load_session_policy(None, pin=pin, environ={})
