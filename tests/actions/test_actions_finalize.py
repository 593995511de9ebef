"""`airlock ci finalize | outputs | action | session` and the bracket's recorder and follow loop
(`python -m airlock.jobs.recorder | follow`) as real processes, with the runner's files parsed
back: every duty done even when another failed, fail modes, brackets."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.actions.helpers import REPO, Runner, parse_file_commands
from tests.support.moto_server import MotoServer, free_port, moto_env

import airlock._commands.ci as ci_command

AIRLOCK = (sys.executable, "-m", "airlock._cli")


def sessions_in(path: Path) -> list[Path]:
    return sorted(p.parent for p in path.glob("*/events.jsonl"))


def record(runner: Runner, sessions: Path, command: str) -> Path:
    runner.airlock("run", "--sessions", str(sessions), "--", "sh", "-c", command)
    (session,) = sessions_in(sessions)
    return session


def test_public_api_is_pinned() -> None:
    assert sorted(ci_command.__all__) == [
        "FinalizeResult",
        "action_inputs",
        "finalize",
        "main",
        "parse_env_blocks",
        "register",
    ]


def test_finalize_archives_summarizes_and_sets_outputs(runner: Runner, tmp_path: Path) -> None:
    sessions = tmp_path / "sessions"
    session = record(runner, sessions, "echo agent at work; exit 3")
    archive = tmp_path / "archive"
    done = runner.ci("finalize", "--sessions", str(sessions), "--archive-to", str(archive))
    assert done.returncode == 0, done.stderr
    out = runner.read("output")
    assert out["session-id"] == session.name
    assert out["session-path"] == str(session.resolve())
    assert (out["status"], out["exit-code"], out["verified"]) == ("complete", "3", "ok")
    assert out["archive-url"].startswith(str(archive))
    assert (Path(out["archive-url"]) / "events.jsonl.gz").exists()
    assert out["session-count"] == "1" and out["problems"] == "0"
    assert f"`{session.name}`" in runner.summary  # a code span renders it as is
    assert "✅ verified" in runner.summary and "and verified it" in runner.summary


def test_finalize_seals_a_session_whose_recorder_was_killed(runner: Runner, tmp_path: Path) -> None:
    sessions = tmp_path / "sessions"
    proc = subprocess.Popen(
        [*AIRLOCK, "run", "--sessions", str(sessions), "--quiet", "--", "sleep", "30"],
        env=runner.env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while not list(sessions.glob("*/events.jsonl")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)  # the job was cancelled hard: no chance to seal
    proc.wait()
    done = runner.ci("finalize", "--sessions", str(sessions))
    assert done.returncode == 0, done.stderr
    assert "sealed" in done.stderr and "as incomplete" in done.stderr
    out = runner.read("output")
    assert (out["status"], out["verified"]) == ("incomplete", "incomplete")
    assert "INCOMPLETE" in runner.summary


def test_nothing_recorded_fails_closed_and_warns_open(runner: Runner, tmp_path: Path) -> None:
    empty = tmp_path / "none"
    closed = runner.ci("finalize", "--sessions", str(empty))
    assert closed.returncode == 85
    assert "::warning title=Airlock::no sealed session" in closed.stdout
    opened = runner.ci("finalize", "--sessions", str(empty), "--fail-mode", "open")
    assert opened.returncode == 0
    assert "::warning title=Airlock::no sealed session" in opened.stdout
    assert "(fail-mode open: reported, not failing the job)" in runner.summary
    assert runner.read("output")["fail-mode"] == "open"


def test_unreachable_archive_fails_the_step_but_everything_else_is_done(
    runner: Runner, tmp_path: Path
) -> None:
    sessions = tmp_path / "sessions"
    session = record(runner, sessions, "echo hi")
    extra = {
        **moto_env(),
        "AIRLOCK_ARCHIVE_RETRY_FOR": "0.5",
        "AIRLOCK_SPOOL": str(tmp_path / "spool"),
    }
    done = runner.ci(
        "finalize",
        "--sessions",
        str(sessions),
        "--archive-to",
        "s3://nowhere/airlock",
        "--endpoint-url",
        f"http://127.0.0.1:{free_port()}",
        extra=extra,
    )
    assert done.returncode == 85, done.stderr
    out = runner.read("output")
    assert out["session-id"] == session.name and out["verified"] == "ok"
    assert out["archive-url"] == "" and out["problems"] == "1"
    assert "archiving" in runner.summary and "failed" in runner.summary
    assert (session / "manifest.json").exists()  # never deleted before a verified archive


@pytest.mark.service
def test_archive_to_s3_object_lock(runner: Runner, tmp_path: Path, moto_server: MotoServer) -> None:
    s3 = moto_server.client("s3")
    s3.create_bucket(Bucket="ci-finalize-lock", ObjectLockEnabledForBucket=True)
    sessions = tmp_path / "sessions"
    session = record(runner, sessions, "echo archived")
    done = runner.ci(
        "finalize",
        "--sessions",
        str(sessions),
        "--archive-to",
        "s3://ci-finalize-lock/airlock",
        "--endpoint-url",
        moto_server.endpoint_url,
        "--retention-days",
        "3",
        extra=moto_env(),
    )
    assert done.returncode == 0, done.stderr
    url = runner.read("output")["archive-url"]
    assert url.startswith("s3://ci-finalize-lock/airlock/github/acme/api/")
    key = url.removeprefix("s3://ci-finalize-lock/") + "manifest.json"
    head = s3.head_object(Bucket="ci-finalize-lock", Key=key)
    assert head["ObjectLockMode"] == "COMPLIANCE"
    body = s3.get_object(Bucket="ci-finalize-lock", Key=key)["Body"].read()
    assert json.loads(body)["session_id"] == session.name


def test_gitlab_publishing(runner: Runner, tmp_path: Path) -> None:
    sessions = tmp_path / "live"
    session = record(runner, sessions, "echo gitlab")
    artifacts = tmp_path / "project" / "airlock"
    done = runner.ci(
        "finalize",
        "--sessions",
        str(sessions),
        "--platform",
        "gitlab",
        "--artifacts",
        str(artifacts),
    )
    assert done.returncode == 0, done.stderr
    dotenv = dict(
        line.split("=", 1) for line in (artifacts / "airlock.env").read_text().splitlines()
    )
    assert dotenv["AIRLOCK_SESSION_ID"] == session.name
    assert dotenv["AIRLOCK_VERIFIED"] == "ok" and dotenv["AIRLOCK_SESSION_STATUS"] == "complete"
    # never a name that would override the next job's AIRLOCK_* flag variables
    assert not {"AIRLOCK_SESSIONS", "AIRLOCK_FAIL_MODE", "AIRLOCK_ARCHIVE_TO"} & set(dotenv)
    assert (artifacts / "sessions" / session.name / "manifest.json").exists()
    assert "<html" in (artifacts / "report.html").read_text()[:200].lower()
    assert f"`{session.name}`" in (artifacts / "summary.md").read_text()


def test_outputs_command(runner: Runner, tmp_path: Path) -> None:
    sessions = tmp_path / "sessions"
    session = record(runner, sessions, "exit 5")
    done = runner.ci("outputs", "--sessions", str(sessions), "--platform", "github")
    assert done.returncode == 0, done.stderr
    out = runner.read("output")
    assert (out["session-id"], out["exit-code"], out["status"]) == (session.name, "5", "complete")


def test_action_main_runs_finalizes_and_post_has_nothing_left(
    runner: Runner, tmp_path: Path
) -> None:
    inputs = {
        "INPUT_COMMAND": "echo 'from the agent'; exit 7",
        "INPUT_ARCHIVE-TO": str(tmp_path / "archive"),
        "INPUT_FAIL-MODE": "closed",
    }
    main = runner.ci("action", "main", extra=inputs)
    assert main.returncode == 7, main.stderr
    assert "from the agent" in main.stdout
    state = runner.read("state")
    assert state["started"] == "1" and state["finalized"] == "1"
    out = runner.read("output")
    assert out["exit-code"] == "7" and out["archive-url"]
    post_env = {**inputs, "STATE_started": "1", "STATE_finalized": "1"}
    post = runner.ci("action", "post", extra={**post_env, "STATE_sessions": state["sessions"]})
    assert post.returncode == 0 and post.stderr == ""


def test_action_post_finishes_what_a_cancelled_main_left(runner: Runner, tmp_path: Path) -> None:
    sessions = tmp_path / "sessions"
    sessions.mkdir()
    proc = subprocess.Popen(
        [*AIRLOCK, "run", "--sessions", str(sessions), "--quiet", "--", "sleep", "30"],
        env=runner.env(),
        start_new_session=True,
    )
    while not list(sessions.glob("*/events.jsonl")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    post = runner.ci(
        "action",
        "post",
        extra={
            "STATE_started": "1",
            "STATE_sessions": str(sessions),
            "INPUT_ARCHIVE-TO": str(tmp_path / "archive"),
        },
    )
    assert post.returncode == 0, post.stderr
    assert "did not finish" in post.stderr
    assert (tmp_path / "archive").exists()
    # outputs of a post step reach nobody; the summary is where the user sees it
    assert "INCOMPLETE" in runner.summary


def test_action_refuses_bad_inputs_before_starting(runner: Runner) -> None:
    no_command = runner.ci("action", "main", extra={"INPUT_COMMAND": ""})
    assert no_command.returncode == 80 and "needs a command" in no_command.stderr
    bad = runner.ci(
        "action", "main", extra={"INPUT_COMMAND": "true", "INPUT_FAIL-MODE": "sometimes"}
    )
    assert bad.returncode == 80 and "fail-mode must be one of" in bad.stderr
    days = runner.ci(
        "action", "main", extra={"INPUT_COMMAND": "true", "INPUT_RETENTION-DAYS": "-1"}
    )
    assert days.returncode == 80 and "whole number" in days.stderr


def run_bash_step(runner: Runner, script: str, name: str) -> None:
    exported = runner.read("env")
    path = runner.root / "work" / f"{name}.sh"
    path.write_text(script)
    extra = {k: exported[k] for k in ("BASH_ENV", "AIRLOCK_JOURNAL")}
    done = subprocess.run(
        ["bash", "-e", str(path)], env=runner.env(extra), capture_output=True, check=True
    )
    assert done.returncode == 0


def test_bracket_records_the_bash_steps_in_between(runner: Runner, tmp_path: Path) -> None:
    state = tmp_path / "bracket"
    start = runner.ci("session", "start", "--state", str(state), "--record-scripts")
    assert start.returncode == 0, start.stderr
    session_id = runner.read("output")["session-id"]
    exported = runner.read("env")
    assert exported["BASH_ENV"] == str(state / "bash-hook.sh")
    run_bash_step(runner, "echo agent step\nuname -s\n", "agent-step")
    stop = runner.ci(
        "session", "stop", "--state", str(state), "--archive-to", str(tmp_path / "archive")
    )
    assert stop.returncode == 0, stop.stderr
    assert parse_file_commands((runner.root / "env").read_text())["BASH_ENV"] == ""
    out = runner.read("output")
    assert out["session-id"] == session_id and out["verified"] == "ok"
    events = gzip.decompress((Path(out["archive-url"]) / "events.jsonl.gz").read_bytes()).decode()
    assert "agent-step.sh" in events and "echo agent step" in events


def test_bracket_whose_recorder_was_killed_is_reported_as_tampering(
    runner: Runner, tmp_path: Path
) -> None:
    state = tmp_path / "bracket"
    assert runner.ci("session", "start", "--state", str(state)).returncode == 0
    pid = json.loads((state / "bracket.json").read_text())["pid"]
    os.killpg(pid, signal.SIGKILL)
    time.sleep(0.2)
    stop = runner.ci("session", "stop", "--state", str(state))
    assert stop.returncode == 84, stop.stderr
    assert "was not running at stop" in stop.stdout
    assert runner.read("output")["status"] == "incomplete"


def test_second_start_is_refused(runner: Runner, tmp_path: Path) -> None:
    state = tmp_path / "bracket"
    assert runner.ci("session", "start", "--state", str(state)).returncode == 0
    again = runner.ci("session", "start", "--state", str(state))
    assert again.returncode == 80 and "already open" in again.stderr
    assert runner.ci("session", "stop", "--state", str(state)).returncode == 0
    assert "already stopped" in runner.ci("session", "stop", "--state", str(state)).stderr


def test_follow_stops_on_a_truncated_journal(runner: Runner, tmp_path: Path) -> None:
    journal, stop = tmp_path / "journal", tmp_path / "stop"
    journal.write_text("one line\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "airlock.jobs.follow", str(journal), "--stop", str(stop)],
        env={**os.environ, "PYTHONPATH": str(REPO / "core")},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()  # follow has read the journal: truncate it only now
    journal.write_text("")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 84
    assert first + out == "one line\nairlock: the bracket journal was truncated\n"


def test_env_blocks_are_read_back_as_the_runner_reads_them() -> None:
    text = "A<<ghadelimiter_1\nline1\nline2\nghadelimiter_1\nB=plain=value\n\nC<<X\n\nX\n"
    assert ci_command.parse_env_blocks(text) == {"A": "line1\nline2", "B": "plain=value", "C": ""}


def test_action_main_policy_is_read_before_changing_to_working_directory(runner: Runner) -> None:
    work = runner.root / "work"
    (work / "policy.yaml").write_text("version: 1\nmask:\n  env: [DEMO_TOKEN]\n")
    (work / "agent-dir").mkdir()
    inputs = {
        "INPUT_COMMAND": 'echo "in $(basename "$PWD") with $DEMO_TOKEN"',
        "INPUT_POLICY": "policy.yaml",
        "INPUT_WORKING-DIRECTORY": "agent-dir",
        "DEMO_TOKEN": "demo-token-value-5521",
    }
    main = runner.ci("action", "main", extra=inputs)
    assert main.returncode == 0, main.stderr
    assert "in agent-dir with " in main.stdout
    assert "demo-token-value-5521" not in main.stdout


def test_bracket_records_script_hashes_not_text_by_default(runner: Runner, tmp_path: Path) -> None:
    state = tmp_path / "bracket"
    assert runner.ci("session", "start", "--state", str(state)).returncode == 0
    script = 'token="pasted-by-the-runner-1234"; test -n "$token"\n'
    run_bash_step(runner, script, "pasted-secret")
    stop = runner.ci(
        "session", "stop", "--state", str(state), "--archive-to", str(tmp_path / "archive")
    )
    assert stop.returncode == 0, stop.stderr
    events = gzip.decompress(
        (Path(runner.read("output")["archive-url"]) / "events.jsonl.gz").read_bytes()
    ).decode()
    digest = hashlib.sha256(script.encode()).hexdigest()
    assert "pasted-secret.sh" in events and f"script sha256={digest} bytes={len(script)}" in events
    assert "pasted-by-the-runner" not in events


GATEWAY_POLICY = """version: 1
gateways:
  - name: appdb
    kind: postgres
    listen: 127.0.0.1:0
    upstream: {host: 127.0.0.1, port: 9, database: app}
    credential: {env: {user: PGUSER_UPSTREAM, password: PGPASSWORD_UPSTREAM}}
"""


def test_bracket_exports_gateway_endpoints_and_masks_the_ticket(
    runner: Runner, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(GATEWAY_POLICY)
    state = tmp_path / "bracket"
    upstream = {"PGUSER_UPSTREAM": "app_agent", "PGPASSWORD_UPSTREAM": "upstream-password-42"}
    start = runner.ci(
        "session", "start", "--state", str(state), "--policy", str(policy), extra=upstream
    )
    assert start.returncode == 0, start.stderr
    exported = runner.read("env")
    assert exported["PGHOST"] == "127.0.0.1" and int(exported["PGPORT"]) > 0
    ticket = exported["PGPASSWORD"]
    assert f"::add-mask::{ticket}" in start.stdout  # masked before it was exported
    assert "upstream-password-42" not in (runner.root / "env").read_text()
    stop = runner.ci(
        "session",
        "stop",
        "--state",
        str(state),
        extra={"AIRLOCK_GATEWAY_VARIABLES": exported["AIRLOCK_GATEWAY_VARIABLES"]},
    )
    assert stop.returncode == 0, stop.stderr
    cleared = parse_file_commands((runner.root / "env").read_text())
    assert cleared["PGPASSWORD"] == "" and cleared["PGHOST"] == ""


def test_bracket_start_fails_closed_when_the_recorder_cannot_start(
    runner: Runner, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(GATEWAY_POLICY)
    state = tmp_path / "bracket"
    start = runner.ci("session", "start", "--state", str(state), "--policy", str(policy))
    assert start.returncode == 85
    assert "did not start" in start.stderr and "PGUSER_UPSTREAM is not set" in start.stderr
    assert "BASH_ENV" not in runner.read("env")
