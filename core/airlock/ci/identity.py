"""Who ran the session, from the CI platform's environment: GitHub Actions, GitLab CI or local.

Only the variables named in the tables below are read, and none of them carries a credential
(a test checks that no name contains TOKEN, JWT, SECRET or PASSWORD). Empty values count as
absent. Local detection asks ``git`` for the commit of the working directory, with a timeout.
"""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from airlock.events import Identity

__all__ = [
    "GITHUB_EXTRA",
    "GITHUB_FIELDS",
    "GITLAB_EXTRA",
    "GITLAB_FIELDS",
    "GIT_TIMEOUT_SECONDS",
    "Platform",
    "detect_identity",
    "detect_platform",
]

Platform = Literal["github", "gitlab", "local"]

GIT_TIMEOUT_SECONDS = 2.0

# Identity field → environment variable(s), first non-empty wins.
GITHUB_FIELDS: Mapping[str, tuple[str, ...]] = {
    "repository": ("GITHUB_REPOSITORY",),
    "repository_id": ("GITHUB_REPOSITORY_ID",),
    "repository_owner": ("GITHUB_REPOSITORY_OWNER",),
    "repository_owner_id": ("GITHUB_REPOSITORY_OWNER_ID",),
    "run_id": ("GITHUB_RUN_ID",),
    "run_attempt": ("GITHUB_RUN_ATTEMPT",),
    "sha": ("GITHUB_SHA",),
    "ref": ("GITHUB_REF",),
    "event": ("GITHUB_EVENT_NAME",),
    "actor": ("GITHUB_ACTOR",),
    "actor_id": ("GITHUB_ACTOR_ID",),
    # GITHUB_WORKFLOW_REF pins the workflow file and ref; GITHUB_WORKFLOW is only its name.
    "workflow": ("GITHUB_WORKFLOW_REF", "GITHUB_WORKFLOW"),
    "job": ("GITHUB_JOB",),
    "server_url": ("GITHUB_SERVER_URL",),
}
GITHUB_EXTRA: Mapping[str, str] = {
    "triggering_actor": "GITHUB_TRIGGERING_ACTOR",
    "head_ref": "GITHUB_HEAD_REF",
    "base_ref": "GITHUB_BASE_REF",
    "ref_name": "GITHUB_REF_NAME",
    "ref_type": "GITHUB_REF_TYPE",
    "ref_protected": "GITHUB_REF_PROTECTED",
    "run_number": "GITHUB_RUN_NUMBER",
    "workflow_name": "GITHUB_WORKFLOW",
    "workflow_sha": "GITHUB_WORKFLOW_SHA",
    "api_url": "GITHUB_API_URL",
    "runner_name": "RUNNER_NAME",
    "runner_os": "RUNNER_OS",
    "runner_arch": "RUNNER_ARCH",
    "runner_environment": "RUNNER_ENVIRONMENT",
    # nektos/act sets ACT=true: a local imitation of Actions, not a GitHub-run job.
    "act": "ACT",
}

GITLAB_FIELDS: Mapping[str, tuple[str, ...]] = {
    "repository": ("CI_PROJECT_PATH",),
    "repository_id": ("CI_PROJECT_ID",),
    "repository_owner": ("CI_PROJECT_NAMESPACE",),
    "repository_owner_id": ("CI_PROJECT_NAMESPACE_ID",),
    "run_id": ("CI_PIPELINE_ID",),
    "sha": ("CI_COMMIT_SHA",),
    "ref": ("CI_COMMIT_REF_NAME",),
    "event": ("CI_PIPELINE_SOURCE",),
    "actor": ("GITLAB_USER_LOGIN",),
    "actor_id": ("GITLAB_USER_ID",),
    "job": ("CI_JOB_NAME",),
    "server_url": ("CI_SERVER_URL",),
}
# GitLab has no run attempt: a retried job gets a new CI_JOB_ID in the same pipeline.
GITLAB_EXTRA: Mapping[str, str] = {
    "job_id": "CI_JOB_ID",
    "job_url": "CI_JOB_URL",
    "ref_protected": "CI_COMMIT_REF_PROTECTED",
    "tag": "CI_COMMIT_TAG",
    "merge_request_iid": "CI_MERGE_REQUEST_IID",
    "merge_request_source_branch": "CI_MERGE_REQUEST_SOURCE_BRANCH_NAME",
    "merge_request_target_branch": "CI_MERGE_REQUEST_TARGET_BRANCH_NAME",
    "pipeline_iid": "CI_PIPELINE_IID",
    "pipeline_url": "CI_PIPELINE_URL",
    "config_path": "CI_CONFIG_PATH",
    "project_visibility": "CI_PROJECT_VISIBILITY",
    "root_namespace": "CI_PROJECT_ROOT_NAMESPACE",
    "runner_id": "CI_RUNNER_ID",
    "server_version": "CI_SERVER_VERSION",
}


def detect_platform(environ: Mapping[str, str]) -> Platform:
    """``github`` under GitHub Actions, ``gitlab`` under GitLab CI, else ``local``."""
    if environ.get("GITHUB_ACTIONS") == "true":
        return "github"
    if environ.get("GITLAB_CI") == "true":
        return "gitlab"
    return "local"


def detect_identity(environ: Mapping[str, str], *, cwd: Path | None = None) -> Identity:
    """The :class:`~airlock.events.Identity` of this session, read from ``environ``.

    ``cwd`` (default: the current directory) is where a local run looks for a git checkout.
    """
    platform = detect_platform(environ)
    if platform == "github":
        return _from_table("github", environ, GITHUB_FIELDS, GITHUB_EXTRA)
    if platform == "gitlab":
        return _from_table("gitlab", environ, GITLAB_FIELDS, GITLAB_EXTRA)
    return _local(environ, Path.cwd() if cwd is None else cwd)


def _get(environ: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = environ.get(name)
        if value:
            return value
    return None


def _from_table(
    platform: Platform,
    environ: Mapping[str, str],
    fields: Mapping[str, tuple[str, ...]],
    extra: Mapping[str, str],
) -> Identity:
    values = {field: _get(environ, *names) for field, names in fields.items()}
    found_extra = {key: v for key, name in extra.items() if (v := _get(environ, name)) is not None}
    return Identity(platform=platform, **values, extra=found_extra)


def _local(environ: Mapping[str, str], cwd: Path) -> Identity:
    extra = {"host": socket.gethostname()}
    # The three run at once: each is a process start, and `airlock run` waits for them.
    sha, ref, dirty = _git_all(
        cwd,
        ("rev-parse", "--verify", "--quiet", "HEAD"),
        ("symbolic-ref", "--quiet", "HEAD"),
        ("status", "--porcelain", "--untracked-files=no", "--ignore-submodules=all"),
    )
    if sha is not None and dirty is not None:
        extra["git_dirty"] = "true" if dirty else "false"
    return Identity(platform="local", actor=_login_user(environ), sha=sha, ref=ref, extra=extra)


def _login_user(environ: Mapping[str, str]) -> str | None:
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        if environ.get(name):
            return environ[name]
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # a uid without a passwd entry, as in some containers
        return None


def _git_all(cwd: Path, *commands: tuple[str, ...]) -> list[str | None]:
    """Output of ``git <command>`` in ``cwd`` for each command, stripped, or None (no git, not
    a checkout, slow, error). The commands run concurrently, within one overall timeout.

    Runs with a minimal environment so that GIT_DIR and friends from the caller cannot point it
    elsewhere, and without the optional locks that ``git status`` would otherwise take.
    """
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "GIT_OPTIONAL_LOCKS": "0",
        "LC_ALL": "C",
    }
    home = os.environ.get("HOME")
    if home:
        env["HOME"] = home
    deadline = time.monotonic() + GIT_TIMEOUT_SECONDS
    inert = _inert_config(cwd, env, deadline)
    if inert is None:  # the config could not be read: git must not run here at all
        return [None for _ in commands]
    procs = [_git_start(cwd, args, {**env, **inert}) for args in commands]
    return [_git_output(proc, deadline) for proc in procs]


def _git_start(
    cwd: Path, args: tuple[str, ...], env: dict[str, str]
) -> subprocess.Popen[str] | None:
    try:
        return subprocess.Popen(
            ["git", "-C", str(cwd), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
    except OSError:
        return None


def _inert_config(cwd: Path, env: dict[str, str], deadline: float) -> dict[str, str] | None:
    """Config that keeps ``git status`` from starting any program, as GIT_CONFIG_* variables.

    The checkout's ``.git/config`` and ``.git/info/attributes`` are the agent's to write (the
    sandbox leaves the workspace writable) and outlive its session: the next ``airlock run``
    runs git here, outside any sandbox. ``core.fsmonitor`` and each configured filter driver
    would run a program of the agent's choosing; the command-line scope (these variables)
    outranks every config file, so they are switched off here (git 2.31 or later).
    """
    listing = ("config", "--null", "--name-only", "--get-regexp", r"^filter\.")
    try:
        found = subprocess.run(
            ["git", "-C", str(cwd), *listing],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env,
            timeout=max(0.0, deadline - time.monotonic()),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if found.returncode not in (0, 1):  # 1: no filter configured
        return None
    keys = found.stdout.split("\0") if found.returncode == 0 else []
    drivers = {key[7 : key.rindex(".")] for key in keys if key.count(".") >= 2}
    pairs = [("core.fsmonitor", "false")]
    for driver in sorted(drivers):
        pairs += [(f"filter.{driver}.{var}", "") for var in ("clean", "smudge", "process")]
        pairs.append((f"filter.{driver}.required", "false"))
    out = {"GIT_CONFIG_COUNT": str(len(pairs))}
    for index, (key, value) in enumerate(pairs):
        out[f"GIT_CONFIG_KEY_{index}"] = key
        out[f"GIT_CONFIG_VALUE_{index}"] = value
    return out


def _git_output(proc: subprocess.Popen[str] | None, deadline: float) -> str | None:
    if proc is None:
        return None
    try:
        out, _ = proc.communicate(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return None
    return out.strip() if proc.returncode == 0 else None
