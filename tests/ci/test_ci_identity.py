"""detect_identity / detect_platform against recorded CI environments and a real git checkout."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import airlock.ci
from airlock.ci import SENSITIVE_CI_VARIABLES, detect_identity, detect_platform
from airlock.ci.identity import GITHUB_EXTRA, GITHUB_FIELDS, GITLAB_EXTRA, GITLAB_FIELDS

_CREDENTIAL_WORDS = ("TOKEN", "JWT", "SECRET", "PASSWORD")
_FIXTURES = Path(__file__).parent / "fixtures"


def load_fixture(name: str) -> dict[str, Any]:
    """A recorded CI environment: ``variables`` and the ``expected_identity`` it yields."""
    data: dict[str, Any] = json.loads((_FIXTURES / name).read_text(encoding="utf-8"))
    return data


def test_public_api_is_pinned() -> None:
    assert sorted(airlock.ci.__all__) == [
        "Platform",
        "SENSITIVE_CI_VARIABLES",
        "agent_environment",
        "detect_identity",
        "detect_platform",
        "is_sensitive_variable",
        "removed_names",
    ]


@pytest.mark.parametrize("fixture", ["github-actions.json", "gitlab-ci.json"])
def test_recorded_job_yields_expected_identity(fixture: str) -> None:
    recorded = load_fixture(fixture)
    identity = detect_identity(recorded["variables"])
    assert identity.to_dict() == recorded["expected_identity"]


@pytest.mark.parametrize("fixture", ["github-actions.json", "gitlab-ci.json"])
def test_no_credential_from_a_recorded_job_reaches_the_identity(fixture: str) -> None:
    identity = detect_identity(load_fixture(fixture)["variables"])
    assert "FIXTURE-SECRET" not in json.dumps(identity.to_dict())
    assert "FIXTURE-SECRET" not in repr(identity)


def test_identity_reads_no_credential_bearing_variable() -> None:
    names = [n for names in GITHUB_FIELDS.values() for n in names] + list(GITHUB_EXTRA.values())
    names += [n for names in GITLAB_FIELDS.values() for n in names] + list(GITLAB_EXTRA.values())
    offending = [n for n in names if any(word in n for word in _CREDENTIAL_WORDS)]
    assert offending == []
    assert not any(airlock.ci.is_sensitive_variable(n) for n in names), (
        "identity reads a variable that is withheld from the agent"
    )


def test_github_workflow_falls_back_to_the_workflow_name(github_env: dict[str, str]) -> None:
    del github_env["GITHUB_WORKFLOW_REF"]
    assert detect_identity(github_env).workflow == "Agent"


def test_a_job_run_by_act_says_so(github_env: dict[str, str]) -> None:
    assert "act" not in detect_identity(github_env).extra
    github_env["ACT"] = "true"
    assert detect_identity(github_env).extra["act"] == "true"


def test_empty_values_count_as_absent(github_env: dict[str, str]) -> None:
    github_env["GITHUB_HEAD_REF"] = ""
    github_env["GITHUB_REPOSITORY_OWNER_ID"] = ""
    identity = detect_identity(github_env)
    assert identity.repository_owner_id is None
    assert "head_ref" not in identity.extra
    assert "repository_owner_id" not in identity.to_dict()


def test_gitlab_has_no_attempt_and_keeps_the_job_id(gitlab_env: dict[str, str]) -> None:
    identity = detect_identity(gitlab_env)
    assert identity.run_attempt is None
    assert identity.extra["job_id"] == "8812345678"


def test_gitlab_branch_pipeline_has_no_merge_request_and_records_tags(
    gitlab_env: dict[str, str],
) -> None:
    for name in [n for n in gitlab_env if n.startswith("CI_MERGE_REQUEST_")]:
        del gitlab_env[name]
    gitlab_env.update(
        CI_PIPELINE_SOURCE="push",
        CI_COMMIT_TAG="v1.2.0",
        CI_COMMIT_REF_NAME="v1.2.0",
        CI_COMMIT_REF_PROTECTED="true",
    )
    identity = detect_identity(gitlab_env)
    assert "merge_request_iid" not in identity.extra
    assert identity.extra["tag"] == "v1.2.0"
    assert identity.extra["ref_protected"] == "true"
    assert (identity.event, identity.ref) == ("push", "v1.2.0")


@pytest.mark.parametrize(
    ("environ", "platform"),
    [
        ({"GITHUB_ACTIONS": "true"}, "github"),
        ({"GITLAB_CI": "true"}, "gitlab"),
        ({"GITHUB_ACTIONS": "false"}, "local"),
        ({"GITLAB_CI": "1"}, "local"),
        ({"CI": "true"}, "local"),
        ({}, "local"),
        ({"GITHUB_ACTIONS": "true", "GITLAB_CI": "true"}, "github"),
    ],
)
def test_detect_platform(environ: dict[str, str], platform: str) -> None:
    assert detect_platform(environ) == platform


_names = st.sampled_from(
    [
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
        "ACTIONS_ID_TOKEN_REQUEST_URL",
        "ACTIONS_RUNTIME_TOKEN",
        "CI_JOB_TOKEN",
        "CI_JOB_JWT",
        "CI_JOB_JWT_V2",
        "CI_REGISTRY_PASSWORD",
        "CI_REPOSITORY_URL",
        "GITHUB_TOKEN",
        "AIRLOCK_BROKER_TOKEN",
        "MY_SECRET",
        "DB_PASSWORD",
    ]
)


@settings(max_examples=200, deadline=None)
@given(
    platform=st.sampled_from(["github-actions.json", "gitlab-ci.json"]),
    secrets=st.dictionaries(_names, st.text(min_size=12, max_size=40), max_size=8),
)
def test_credential_values_never_reach_the_identity(platform: str, secrets: dict[str, str]) -> None:
    environ = {**load_fixture(platform)["variables"]}
    marked = {name: f"\x00LEAK{value}" for name, value in secrets.items()}
    environ.update(marked)
    rendered = json.dumps(detect_identity(environ).to_dict())
    for value in marked.values():
        assert json.dumps(value)[1:-1] not in rendered


# ---- local runs --------------------------------------------------------------------------------


def _git(repo: Path, *args: str) -> str:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(repo),
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    done = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, env=env, check=True
    )
    return done.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "checkout"
    path.mkdir()
    _git(path, "init", "-q", "-b", "agent-branch")
    (path / "README").write_text("hello\n")
    _git(path, "add", "README")
    _git(path, "commit", "-q", "-m", "first")
    return path


def test_local_identity_in_a_git_checkout(repo: Path) -> None:
    identity = detect_identity({"USER": "alice"}, cwd=repo)
    assert identity.platform == "local"
    assert identity.actor == "alice"
    assert identity.sha == _git(repo, "rev-parse", "HEAD")
    assert identity.ref == "refs/heads/agent-branch"
    assert identity.extra == {"host": socket.gethostname(), "git_dirty": "false"}


def test_local_identity_marks_a_dirty_checkout(repo: Path) -> None:
    (repo / "README").write_text("changed\n")
    assert detect_identity({"USER": "alice"}, cwd=repo).extra["git_dirty"] == "true"


def test_local_identity_on_a_detached_head_has_a_sha_and_no_ref(repo: Path) -> None:
    _git(repo, "checkout", "-q", "--detach")
    identity = detect_identity({"USER": "alice"}, cwd=repo)
    assert identity.sha == _git(repo, "rev-parse", "HEAD")
    assert identity.ref is None


def test_local_identity_outside_git_omits_git_facts(tmp_path: Path) -> None:
    identity = detect_identity({"LOGNAME": "bob", "USER": "ignored"}, cwd=tmp_path)
    assert identity.actor == "bob"
    assert (identity.sha, identity.ref) == (None, None)
    assert identity.extra == {"host": socket.gethostname()}


def test_local_identity_without_git_installed_omits_git_facts(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    identity = detect_identity({"USER": "alice"}, cwd=repo)
    assert identity.sha is None
    assert "git_dirty" not in identity.extra


def test_local_identity_ignores_git_dir_from_the_caller(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "elsewhere"))
    assert detect_identity({"USER": "alice"}, cwd=repo).sha == _git(repo, "rev-parse", "HEAD")


def test_local_actor_falls_back_to_the_password_database(tmp_path: Path) -> None:
    import pwd

    expected = pwd.getpwuid(os.getuid()).pw_name
    assert detect_identity({}, cwd=tmp_path).actor == expected


def test_sensitive_list_names_the_oidc_request_pair() -> None:
    assert {"ACTIONS_ID_TOKEN_REQUEST_URL", "ACTIONS_ID_TOKEN_REQUEST_TOKEN"} <= set(
        SENSITIVE_CI_VARIABLES
    )
