"""`airlock gate request --backend github-check|gitlab` goes through the broker with the job's
token; without `airlock credentials` first, it says what to run."""

from __future__ import annotations

from pathlib import Path

import pytest

from airlock._cli import main
from airlock.errors import ExitCode


@pytest.mark.parametrize("backend", ["github-check", "gitlab"])
def test_broker_backends_need_a_job_token(
    backend: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AIRLOCK_STATE_DIR", str(tmp_path / "no-state"))
    code = main(["gate", "request", "--backend", backend, "--operation", "deploy v1.2"])
    assert code == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "no broker token" in err
    assert "airlock credentials" in err


def test_the_operation_is_masked_with_the_policy_and_the_job_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from airlock.brokerclient import JobState, save_job_state

    state_dir = tmp_path / "state"
    leases = (
        {"lease_id": "l1", "grant": "g", "expires_at": 0, "values": {"K": "issued-value-123"}},
    )
    save_job_state(JobState("http://127.0.0.1:1", "job-token-abcdef", "r", leases), state_dir)
    monkeypatch.setenv("AIRLOCK_STATE_DIR", str(state_dir))
    monkeypatch.setenv("API_KEY", "policy-secret-4567")
    policy = tmp_path / "airlock.yaml"
    policy.write_text("mask: {env: [API_KEY]}\n")
    text = "curl -H 'X-Api-Key: policy-secret-4567' --token job-token-abcdef -d issued-value-123"
    code = main(
        [
            "gate",
            "request",
            "--backend",
            "deny",
            "--policy",
            str(policy),
            "--operation",
            text,
            "--json",
        ]
    )
    assert code == ExitCode.APPROVAL_DENIED
    out = capsys.readouterr()
    for secret in ("policy-secret-4567", "job-token-abcdef", "issued-value-123"):
        assert secret not in out.out + out.err
    assert "[MASKED:env:API_KEY]" in out.out + out.err


def test_github_comment_refuses_rules_it_cannot_honour() -> None:
    from airlock.audit import SigningKey
    from airlock.errors import ConfigError
    from airlock.gate.github_comment import GitHubCommentBackend
    from airlock.gate.rules import ApproverRules

    for rules in (ApproverRules(min_approvals=2), ApproverRules(require_justification=True)):
        with pytest.raises(ConfigError, match="needs the broker"):
            GitHubCommentBackend(
                None,  # type: ignore[arg-type]  # refused before the API is touched
                "acme/api",
                12,
                key=SigningKey.generate(),
                approvers=rules,
            )
