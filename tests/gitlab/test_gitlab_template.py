"""The GitLab template's layout choices (issue 14): nothing of Airlock's in the agent's project
directory while it runs, a cache an agent cannot poison, and a gate that gets deployment
approvals."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "gitlab-templates" / "airlock.yml"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def _documents() -> tuple[dict[str, Any], dict[str, Any]]:
    header, jobs = yaml.safe_load_all(TEMPLATE.read_text())
    return header["spec"]["inputs"], jobs


def test_venv_and_sessions_live_outside_the_project_directory() -> None:
    inputs, jobs = _documents()
    assert inputs["sessions-dir"]["default"].startswith("$CI_BUILDS_DIR/.airlock/$CI_JOB_ID/")
    assert inputs["state-dir"]["default"].startswith("$CI_BUILDS_DIR/")
    assert jobs[".airlock-gate"]["variables"]["AIRLOCK_SESSIONS"].startswith("$CI_BUILDS_DIR/")
    install = "\n".join(jobs[".airlock-install"])
    assert 'airlock_venv="${CI_BUILDS_DIR:-/tmp}/.airlock/${CI_JOB_ID:-local}/venv"' in install
    assert ".airlock-venv" not in TEMPLATE.read_text()
    assert '/.airlock-pip-cache/\' >> "$CI_PROJECT_DIR/.git/info/exclude"' in install


def test_the_cache_is_per_job_version_and_lock_and_agent_jobs_only_pull() -> None:
    inputs, jobs = _documents()
    base = jobs[".airlock-base"]["cache"]
    assert base["key"] == {
        "files": ["$[[ inputs.install-lock ]]"],
        "prefix": f"airlock-{VERSION}-$CI_JOB_NAME",
    }
    assert base["paths"] == [".airlock-pip-cache/"]
    run = jobs[".airlock-run"]["cache"]
    assert run["policy"] == "pull" and run["key"] == base["key"]
    assert f"=={VERSION}" in inputs["install"]["default"]


def test_the_gate_is_a_deployment_so_approval_rules_apply() -> None:
    _, jobs = _documents()
    gate = jobs[".airlock-gate"]
    assert gate["environment"]["action"] == "start"
    assert gate["when"] == "manual" and gate["allow_failure"] is False
