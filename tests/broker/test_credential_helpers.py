"""The job's issued credentials, handed to real tools: an AWS SDK through `credential_process`,
and git through a credential helper. Both read the saved job state; neither exchanges again."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import boto3

from airlock.brokerclient import JobState, save_job_state

AIRLOCK = str(Path(sys.executable).parent / "airlock")


def _state(tmp_path: Path) -> Path:
    leases = (
        {
            "lease_id": "laws",
            "grant": "deploy-aws",
            "expires_at": time.time() + 900,
            "values": {
                "AWS_ACCESS_KEY_ID": "ASIAEXAMPLEEXAMPLE01",
                "AWS_SECRET_ACCESS_KEY": "issued-secret-" + "x" * 26,
                "AWS_SESSION_TOKEN": "issued-session-token",
            },
        },
        {
            "lease_id": "lgh",
            "grant": "gh",
            "expires_at": time.time() + 900,
            "values": {"GITHUB_TOKEN": "ghs_issued_token_value"},
        },
    )
    state_dir = tmp_path / "state"
    save_job_state(JobState("http://127.0.0.1:1", "job-token", "rule", leases), state_dir)
    return state_dir


def test_aws_sdk_reads_credentials_through_credential_process(
    tmp_path: Path, monkeypatch: object
) -> None:
    state_dir = _state(tmp_path)
    config = tmp_path / "aws-config"
    config.write_text(
        "[profile airlock]\n"
        f"credential_process = {AIRLOCK} credentials --helper aws-process --state-dir {state_dir}\n"
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    creds = boto3.Session(profile_name="airlock").get_credentials()
    assert creds is not None
    frozen = creds.get_frozen_credentials()
    assert frozen.access_key == "ASIAEXAMPLEEXAMPLE01"
    assert frozen.token == "issued-session-token"


def test_git_gets_the_forge_token_from_the_helper(tmp_path: Path) -> None:
    state_dir = _state(tmp_path)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
    }
    helper = f"!{AIRLOCK} credentials --state-dir {state_dir} --helper git-credential"
    subprocess.run(["git", "config", "--global", "credential.helper", helper], env=env, check=True)
    filled = subprocess.run(
        ["git", "credential", "fill"],
        input="protocol=https\nhost=github.com\n\n",
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "username=x-access-token" in filled.stdout
    assert "password=ghs_issued_token_value" in filled.stdout


def test_gitlab_export_is_a_private_script_not_a_dotenv_artifact(tmp_path: Path) -> None:
    from airlock._commands.credentials import _export

    out = tmp_path / "private" / "creds.env"
    _export("gitlab", {"DEPLOY_KEY": "value with 'quotes'"}, out)
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    sourced = subprocess.run(
        ["bash", "-c", f'. "{out}"; printf %s "$DEPLOY_KEY"'],
        capture_output=True,
        text=True,
        check=True,
    )
    assert sourced.stdout == "value with 'quotes'"
