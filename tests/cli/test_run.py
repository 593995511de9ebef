"""`airlock run` end to end: the installed CLI in a subprocess, real commands, real strace."""

from __future__ import annotations

import base64
import json
import os
import pty
import resource
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
AIRLOCK = str(Path(sys.executable).parent / "airlock")
DEMO = str(REPO / "examples" / "demo_agent.py")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "CI_", "ACTIONS_"))}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    env.update(extra)
    return env


def _policy(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "airlock.yaml"
    path.write_text(text)
    return path


def airlock(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, **kw: Any
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [AIRLOCK, *args],
        env=env or _env(tmp_path),
        capture_output=True,
        timeout=60,
        check=False,
        **kw,
    )


def _only_session(sessions: Path) -> Path:
    found = [p for p in sessions.iterdir() if p.is_dir()]
    assert len(found) == 1, found
    return found[0]


def _events(session: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (session / "events.jsonl").read_text().splitlines()]


def _secret_forms(secret: str) -> list[bytes]:
    raw = secret.encode()
    return [
        raw,
        base64.b64encode(raw),
        base64.urlsafe_b64encode(raw).rstrip(b"="),
        raw.hex().encode(),
    ]


@pytest.fixture
def demo_run(tmp_path: Path) -> tuple[subprocess.CompletedProcess[bytes], Path, str]:
    secret = "demo-" + secrets.token_hex(16)
    policy = _policy(tmp_path, "mask: {env: [DEMO_API_KEY], correlate: hmac}\n")
    sessions = tmp_path / "sessions"
    result = airlock(
        tmp_path,
        "run",
        "--policy",
        str(policy),
        "--sessions",
        str(sessions),
        "--",
        sys.executable,
        DEMO,
        env=_env(tmp_path, DEMO_API_KEY=secret),
    )
    return result, _only_session(sessions), secret


def test_demo_agent_output_is_masked_on_screen_and_in_the_log(
    demo_run: tuple[subprocess.CompletedProcess[bytes], Path, str],
) -> None:
    result, session, secret = demo_run
    assert result.returncode == 0, result.stderr
    log = (session / "events.jsonl").read_bytes()
    token = b"ghp_A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
    for form in [*_secret_forms(secret), token]:
        assert form not in result.stdout
        assert form not in result.stderr
        assert form not in log
    assert b"[MASKED:env:DEMO_API_KEY:" in result.stdout  # correlation tag present
    assert b"agent: done (tests exit 0)" in result.stdout
    assert b"[MASKED:" in result.stderr  # the GitHub-shaped token on stderr


def test_demo_session_records_processes_and_verifies(
    tmp_path: Path, demo_run: tuple[subprocess.CompletedProcess[bytes], Path, str]
) -> None:
    _, session, _ = demo_run
    events = _events(session)
    types = [e["type"] for e in events]
    assert types[0] == "session.start"
    assert types[-1] == "session.end"
    execs = [e["data"] for e in events if e["type"] == "process.exec"]
    root = execs[0]
    assert root["argv"][1] == DEMO
    nested = next(e for e in execs if e["argv"] == ["echo", "agent: nested tool"])
    parent = next(e for e in execs if e["pid"] == nested["ppid"])
    assert parent["argv"][0] == sys.executable  # python -c ... spawned echo
    assert parent["ppid"] == root["pid"]
    exits = [e["data"] for e in events if e["type"] == "process.exit"]
    assert {"pid": root["pid"], "status": 0} == {k: exits[-1][k] for k in ("pid", "status")}
    verified = airlock(tmp_path, "verify", str(session))
    assert verified.returncode == 0, verified.stderr
    manifest = json.loads((session / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["exit_code"] == 0


@pytest.mark.parametrize("code", [0, 1, 7, 126])
def test_exit_status_passes_through(tmp_path: Path, code: int) -> None:
    result = airlock(
        tmp_path, "run", "--sessions", str(tmp_path / "s"), "--", "sh", "-c", f"exit {code}"
    )
    assert result.returncode == code


def test_the_quick_exit_keeps_buffered_output_and_the_status(tmp_path: Path) -> None:
    """The installed `airlock run` ends with os._exit (no interpreter teardown): what Python
    still buffered (stdout/stderr to pipes, unbuffered mode off) is flushed first."""
    env = {k: v for k, v in _env(tmp_path).items() if k != "PYTHONUNBUFFERED"}
    sessions = tmp_path / "s"
    result = airlock(
        tmp_path, "run", "--sessions", str(sessions), "--", "sh", "-c", "echo out; exit 7", env=env
    )
    assert result.returncode == 7
    assert result.stdout == b"out\n"
    assert result.stderr.startswith(b"airlock: session ") and result.stderr.endswith(b"\n")
    assert b"sealed (" in result.stderr
    assert (_only_session(sessions) / "manifest.json").exists()


def test_death_by_signal_becomes_128_plus_n(tmp_path: Path) -> None:
    result = airlock(
        tmp_path, "run", "--sessions", str(tmp_path / "s"), "--", "sh", "-c", "kill -9 $$"
    )
    assert result.returncode == 137
    end = _events(_only_session(tmp_path / "s"))[-1]
    assert end["data"]["signal"] == "SIGKILL"


def test_command_not_found_is_127_and_starts_nothing(tmp_path: Path) -> None:
    result = airlock(
        tmp_path, "run", "--sessions", str(tmp_path / "s"), "--", "no-such-command-xyz"
    )
    assert result.returncode == 127
    assert b"command not found: no-such-command-xyz" in result.stderr
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())


def test_missing_command_is_a_usage_error(tmp_path: Path) -> None:
    result = airlock(tmp_path, "run", "--sessions", str(tmp_path / "s"))
    assert result.returncode == 80
    assert b"no command given" in result.stderr


def test_invalid_policy_refuses_to_start(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    policy = _policy(tmp_path, "capture: {exec: requird}\nmask: {paterns: []}\n")
    result = airlock(
        tmp_path,
        "run",
        "--policy",
        str(policy),
        "--sessions",
        str(tmp_path / "s"),
        "--",
        "touch",
        str(marker),
    )
    assert result.returncode == 80
    assert b"paterns" in result.stderr
    assert b"patterns" in result.stderr  # the suggestion
    assert not marker.exists()


def test_required_exec_capture_without_a_tracer_fails_closed(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    result = airlock(
        tmp_path,
        "run",
        "--strace",
        str(tmp_path / "no-strace"),
        "--sessions",
        str(tmp_path / "s"),
        "--",
        "touch",
        str(marker),
    )
    assert result.returncode == 85
    assert b"exec capture is required" in result.stderr
    assert not marker.exists()


def test_best_effort_capture_runs_and_says_so(tmp_path: Path) -> None:
    policy = _policy(tmp_path, "capture: {exec: best_effort}\n")
    result = airlock(
        tmp_path,
        "run",
        "--policy",
        str(policy),
        "--strace",
        str(tmp_path / "no-strace"),
        "--sessions",
        str(tmp_path / "s"),
        "--",
        "echo",
        "hi",
    )
    assert result.returncode == 0
    status = next(
        e for e in _events(_only_session(tmp_path / "s")) if e["type"] == "capture.status"
    )
    assert status["data"]["exec"] == "best_effort"
    assert status["data"]["active"] is False


def test_unwritable_sessions_directory_fails_closed(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    blocked = tmp_path / "blocked"
    blocked.write_text("a file, not a directory")
    result = airlock(tmp_path, "run", "--sessions", str(blocked / "s"), "--", "touch", str(marker))
    assert result.returncode == 85
    assert b"airlock: error" in result.stderr
    assert not marker.exists()


def test_disk_full_stops_the_command_and_keeps_what_was_recorded(tmp_path: Path) -> None:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))

    script = "i=0; while [ $i -lt 100000 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; i=$((i+1)); done; touch done"
    result = airlock(
        tmp_path,
        "run",
        "--sessions",
        str(tmp_path / "s"),
        "--",
        "sh",
        "-c",
        script,
        preexec_fn=limit,
        cwd=tmp_path,
    )
    assert result.returncode == 85
    assert not (tmp_path / "done").exists()  # the command was stopped
    session = _only_session(tmp_path / "s")
    manifest = json.loads((session / "manifest.json").read_text())
    assert manifest["status"] == "incomplete"
    assert "recording failed" in manifest["reason"]
    verified = airlock(tmp_path, "verify", "--allow-incomplete", str(session))
    assert verified.returncode == 0, verified.stderr


def test_sigkill_mid_stream_leaves_a_verifiable_incomplete_session(tmp_path: Path) -> None:
    sessions = tmp_path / "s"
    proc = subprocess.Popen(
        [
            AIRLOCK,
            "run",
            "--sessions",
            str(sessions),
            "--",
            "sh",
            "-c",
            "while :; do echo tick; sleep 0.01; done",
        ],
        env=_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        logs = list(sessions.glob("*/events.jsonl"))
        if logs and logs[0].read_bytes().count(b"tick") >= 5:
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    session = _only_session(sessions)
    assert not (session / "manifest.json").exists()
    assert airlock(tmp_path, "verify", str(session)).returncode == 84  # unsealed: not "fine"
    # The next run finds it and seals it as incomplete.
    assert airlock(tmp_path, "run", "--sessions", str(sessions), "--", "true").returncode == 0
    manifest = json.loads((session / "manifest.json").read_text())
    assert manifest["status"] == "incomplete"
    strict = airlock(tmp_path, "verify", str(session))
    assert strict.returncode == 84
    assert airlock(tmp_path, "verify", "--allow-incomplete", str(session)).returncode == 0


def test_sigterm_is_forwarded_and_recorded(tmp_path: Path) -> None:
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda s, f: (print('term', flush=True), sys.exit(42)))\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )
    proc = subprocess.Popen(
        [AIRLOCK, "run", "--sessions", str(tmp_path / "s"), "--", sys.executable, "-c", code],
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 42
    assert b"term" in out
    events = _events(_only_session(tmp_path / "s"))
    assert {"forwarded": "SIGTERM"} in [e["data"] for e in events if e["type"] == "signal"]


def test_ci_tokens_never_reach_the_agent_and_identity_is_recorded(tmp_path: Path) -> None:
    env = _env(
        tmp_path,
        GITHUB_ACTIONS="true",
        GITHUB_REPOSITORY="acme/api",
        GITHUB_REPOSITORY_ID="123456",
        GITHUB_REPOSITORY_OWNER="acme",
        GITHUB_REPOSITORY_OWNER_ID="7890",
        GITHUB_RUN_ID="42",
        GITHUB_RUN_ATTEMPT="1",
        GITHUB_SHA="a" * 40,
        GITHUB_REF="refs/heads/main",
        GITHUB_EVENT_NAME="push",
        GITHUB_ACTOR="octocat",
        ACTIONS_ID_TOKEN_REQUEST_URL="http://127.0.0.1:1/token",
        ACTIONS_ID_TOKEN_REQUEST_TOKEN="request-token-" + secrets.token_hex(8),
    )
    probe = "import os; print(sorted(k for k in os.environ if k.startswith('ACTIONS_')))"
    result = airlock(
        tmp_path,
        "run",
        "--sessions",
        str(tmp_path / "s"),
        "--",
        sys.executable,
        "-c",
        probe,
        env=env,
    )
    assert result.returncode == 0
    assert result.stdout.startswith(b"[]")
    start = _events(_only_session(tmp_path / "s"))[0]["data"]
    assert "ACTIONS_ID_TOKEN_REQUEST_TOKEN" in start["env_removed"]
    identity = start["identity"]
    assert identity["platform"] == "github"
    assert (identity["repository_id"], identity["repository_owner_id"], identity["run_id"]) == (
        "123456",
        "7890",
        "42",
    )


def test_pty_when_stdout_is_a_terminal(tmp_path: Path) -> None:
    master, slave = pty.openpty()
    code = "import os; print('tty' if os.isatty(1) else 'pipe')"
    proc = subprocess.Popen(
        [AIRLOCK, "run", "--sessions", str(tmp_path / "s"), "--", sys.executable, "-c", code],
        env=_env(tmp_path),
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    assert proc.wait(timeout=30) == 0
    assert b"tty" in seen
    start = _events(_only_session(tmp_path / "s"))[0]
    assert start["data"]["pty"] is True
    streams = {
        e["data"]["stream"] for e in _events(_only_session(tmp_path / "s")) if e["type"] == "output"
    }
    assert streams == {"pty"}


def test_stdin_is_forwarded(tmp_path: Path) -> None:
    for mode in ("never", "always"):
        result = airlock(
            tmp_path,
            "run",
            "--pty",
            mode,
            "--sessions",
            str(tmp_path / mode),
            "--",
            sys.executable,
            "-c",
            "import sys; print('got', sys.stdin.readline().strip())",
            input=b"hello\n",
        )
        assert result.returncode == 0
        assert b"got hello" in result.stdout


@pytest.mark.parametrize("capture", ["required", "off"])
def test_background_leftovers_are_stopped_when_the_command_ends(
    tmp_path: Path, capture: str
) -> None:
    policy = _policy(tmp_path, f"capture: {{exec: {capture}}}\n")
    script = "nohup sleep 60 >/dev/null 2>&1 & echo leftover=$!"
    started = time.monotonic()
    result = airlock(
        tmp_path,
        "run",
        "--policy",
        str(policy),
        "--sessions",
        str(tmp_path / "s"),
        "--",
        "sh",
        "-c",
        script,
    )
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 20
    pid = int(result.stdout.split(b"leftover=")[1].split()[0])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists()  # nothing runs on unrecorded after the seal
    end = _events(_only_session(tmp_path / "s"))[-1]
    assert end["data"]["leftovers_stopped"] is True
    assert end["data"]["exit_status"] == 0


@pytest.mark.parametrize("given", [None, "logfire"])
def test_pydantic_plugins_are_off_for_airlock_not_for_the_agent(
    tmp_path: Path, given: str | None
) -> None:
    # `airlock run` turns pydantic's plugin scan off in its own process only.
    env = _env(tmp_path)
    env.pop("PYDANTIC_DISABLE_PLUGINS", None)
    if given is not None:
        env["PYDANTIC_DISABLE_PLUGINS"] = given
    policy = _policy(tmp_path, "version: 1\n")
    script = 'echo "plugins=${PYDANTIC_DISABLE_PLUGINS-unset}"'
    out = airlock(tmp_path, "run", "--policy", str(policy), "--", "sh", "-c", script, env=env)
    assert out.returncode == 0, out.stderr
    assert f"plugins={given or 'unset'}" in out.stdout.decode()
