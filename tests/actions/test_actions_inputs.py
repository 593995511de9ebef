"""The root action's main and post steps as real processes on a fake runner: bad inputs are
refused before anything starts (exit 80 and an ::error:: annotation, and the post step has
nothing to do), a failing agent is annotated, and a cancelled run's summary says so."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.actions.helpers import Runner


def _inputs(**values: str) -> dict[str, str]:
    return {f"INPUT_{name.upper()}": value for name, value in values.items()}


@pytest.mark.parametrize(
    ("inputs", "named"),
    [
        (
            {"working-directory": "no/such/dir"},
            "working-directory 'no/such/dir' is not a directory",
        ),
        ({"policy": "missing.yaml"}, "policy 'missing.yaml' is not a file"),
        ({"fail-mode": "sometimes"}, "fail-mode must be one of closed, open"),
        ({"retention-days": "ten"}, "retention-days must be a whole number"),
        ({"broker-url": "ftp://x"}, "broker-url must be an http(s):// URL"),
        ({"grants": "ok, bad;name", "broker-url": "https://b"}, "'bad;name'"),
    ],
)
def test_bad_inputs_exit_80_with_an_annotation_and_start_nothing(
    runner: Runner, inputs: dict[str, str], named: str
) -> None:
    done = runner.ci("action", "main", extra=_inputs(command="echo hi", **inputs))
    assert done.returncode == 80, done.stderr
    assert "Traceback" not in done.stderr and named in done.stderr
    (annotation,) = [line for line in done.stdout.splitlines() if line.startswith("::error")]
    assert annotation.startswith("::error title=Airlock::") and named in annotation
    assert runner.read("state") == {}  # nothing started: the post step has nothing to do
    post = runner.ci("action", "post", extra=_inputs(command="echo hi", **inputs))
    assert post.returncode == 0 and post.stdout == ""


def test_a_failing_agent_gets_an_error_annotation(runner: Runner) -> None:
    done = runner.ci("action", "main", extra=_inputs(command="echo working; exit 3"), timeout=120)
    assert done.returncode == 3, done.stderr
    errors = [line for line in done.stdout.splitlines() if line.startswith("::error")]
    assert errors == [
        "::error title=Airlock::the agent command failed with exit status 3; "
        "the session is sealed and in the job summary"
    ]
    assert "cancelled" not in runner.summary
    report = Path(runner.read("output")["report-path"])
    assert report.name == "report.html" and "<!DOCTYPE html>" in report.read_text()


def test_a_cancelled_run_says_cancelled_in_the_summary(runner: Runner, tmp_path: Path) -> None:
    sessions = tmp_path / "left" / "sessions"
    runner.airlock("run", "--sessions", str(sessions), "--", "sh", "-c", "echo half")
    state = {"STATE_started": "1", "STATE_sessions": str(sessions), "STATE_pid": ""}
    done = runner.ci("action", "post", extra={**state, **_inputs(command="x")}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert runner.summary.startswith("> [!WARNING]\n> **cancelled: the main step did not finish")


def test_gitlab_after_script_notes_the_job_status_in_the_summary(
    runner: Runner, tmp_path: Path
) -> None:
    sessions, artifacts = tmp_path / "sessions", tmp_path / "artifacts"
    runner.airlock("run", "--sessions", str(sessions), "--", "sh", "-c", "exit 3")
    note = "job canceled: the script did not finish"
    argv = ["finalize", "--sessions", str(sessions), "--platform", "gitlab"]
    done = runner.ci(*argv, "--artifacts", str(artifacts), "--note", note, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = (artifacts / "summary.md").read_text()
    assert summary.startswith("> [!WARNING]\n> **job canceled: the script did not finish**")


def test_an_unknown_input_is_refused_naming_the_valid_ones(runner: Runner) -> None:
    from tests.actions.helpers import REPO

    extra = {"AIRLOCK_ACTION_YML": str(REPO / "action.yml"), **_inputs(command="x", comand="y")}
    done = runner.ci("action", "main", extra=extra)
    assert done.returncode == 80
    assert "unknown input(s) comand for this action" in done.stderr
    assert "the inputs are: " in done.stderr and "working-directory" in done.stderr
    assert runner.read("state") == {}
