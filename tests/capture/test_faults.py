"""Process lifetime faults (issue 13, item 5): the tracer dies mid-run, the recorder dies under a
pty, the command leaves a setsid daemon behind. Real airlock, real strace, real signals."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.support.airlock_cli import AIRLOCK, clean_env, events, only_session, run_airlock

SECRET = "pending-" + "7Hq2vX9kLm4Rt8Wz"
DEADLINE = 20.0  # seconds to wait for something that must happen (never a timing assertion)


def _wait_for(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _tracer_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("TracerPid:"):
            return int(line.split()[1])
    return 0


def _start(tmp_path: Path, policy: str, *argv: str, pty: str = "never") -> subprocess.Popen[bytes]:
    (tmp_path / "airlock.yaml").write_text(policy)
    return subprocess.Popen(
        [
            AIRLOCK,
            "run",
            "--policy",
            str(tmp_path / "airlock.yaml"),
            "--sessions",
            str(tmp_path / "s"),
            "--pty",
            pty,
            "--",
            *argv,
        ],
        env=clean_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_a_dead_tracer_stops_the_command_and_fails_closed(tmp_path: Path) -> None:
    pidfile = tmp_path / "agent.pid"
    proc = _start(
        tmp_path,
        "capture: {exec: required}\n",
        "sh",
        "-c",
        f"echo $$ > {pidfile}; while :; do sleep 0.05; done",
    )
    try:
        _wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), "the agent")
        agent = int(pidfile.read_text())
        _wait_for(lambda: _tracer_of(agent), "strace to attach")
        os.kill(_tracer_of(agent), signal.SIGKILL)
        _, err = proc.communicate(timeout=DEADLINE)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    assert proc.returncode == 85, err
    assert b"exec tracer" in err
    _wait_for(lambda: not _alive(agent), "the agent to be stopped")
    manifest = json.loads((only_session(tmp_path / "s") / "manifest.json").read_text())
    assert manifest["status"] == "incomplete"
    assert "exec tracer (strace) stopped" in manifest["reason"]


def test_best_effort_notes_a_dead_tracer_and_lets_the_command_finish(tmp_path: Path) -> None:
    go, pidfile = tmp_path / "go", tmp_path / "pid"
    # No fork or exec after the tracer is gone: with --seccomp-bpf they would fail (ENOSYS).
    agent = (
        "import os, pathlib, sys, time\n"
        f"pathlib.Path({str(pidfile)!r}).write_text(str(os.getpid()))\n"
        f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.02)\n"
        "sys.exit(3)\n"
    )
    proc = _start(tmp_path, "capture: {exec: best_effort}\n", sys.executable, "-c", agent)
    _wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), "the agent")
    agent = int(pidfile.read_text())
    _wait_for(lambda: _tracer_of(agent), "strace to attach")
    os.kill(_tracer_of(agent), signal.SIGKILL)
    _wait_for(lambda: not _tracer_of(agent), "strace to be gone")
    go.touch()
    proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 3
    end = events(only_session(tmp_path / "s"))[-1]["data"]
    assert end["tracer_lost"] is True


def test_the_agent_gets_sighup_when_the_recorder_dies_under_a_pty(tmp_path: Path) -> None:
    got = tmp_path / "got-hup"
    ready = tmp_path / "ready"
    agent = (
        "import signal, sys, time, pathlib\n"
        f"signal.signal(signal.SIGHUP, lambda *a: (pathlib.Path({str(got)!r}).touch(), "
        "sys.exit(0)))\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "time.sleep(60)\n"
    )
    proc = _start(
        tmp_path, "capture: {exec: required}\n", sys.executable, "-c", agent, pty="always"
    )
    try:
        _wait_for(ready.exists, "the agent")
        proc.kill()
        proc.communicate()
        _wait_for(got.exists, "SIGHUP to reach the agent")
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    assert got.exists()


def test_a_setsid_daemon_is_stopped_at_the_end_under_the_tracer(tmp_path: Path) -> None:
    script = "setsid sleep 300 >/dev/null 2>&1 < /dev/null & echo daemon=$!; sleep 0.2"
    proc = _start(tmp_path, "capture: {exec: required}\n", "sh", "-c", script)
    out, err = proc.communicate(timeout=DEADLINE * 2)
    assert proc.returncode == 0, err
    daemon = int(out.split(b"daemon=")[1].split()[0])
    assert not _alive(daemon)
    end = events(only_session(tmp_path / "s"))[-1]["data"]
    assert end["leftovers_stopped"] is True
    assert end["leftovers_remaining"] == 0


def test_without_the_tracer_a_setsid_daemon_is_not_claimed_as_stopped(tmp_path: Path) -> None:
    script = "setsid sleep 300 >/dev/null 2>&1 < /dev/null & echo daemon=$!; sleep 0.2"
    proc = _start(tmp_path, "capture: {exec: off}\n", "sh", "-c", script)
    out, err = proc.communicate(timeout=DEADLINE * 2)
    daemon = int(out.split(b"daemon=")[1].split()[0])
    try:
        assert proc.returncode == 0, err
        end = events(only_session(tmp_path / "s"))[-1]["data"]
        assert _alive(daemon)  # it escaped: the session must not say otherwise
        assert end["leftovers_stopped"] is False
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(daemon, signal.SIGKILL)


def _logged_output(session: Path) -> bytes:
    out = b""
    for e in events(session):
        if e["type"] == "output":
            data = e["data"]
            out += data["text"].encode() if "text" in data else base64.b64decode(data["b64"])
    return out


def _pending_output(session: Path) -> bytes:
    from airlock.audit.pending import read_pending

    return b"".join(read_pending(session).values())


@pytest.mark.parametrize(
    ("tail", "logged_tail"),
    [
        (b"last words without a newline", b"last words without a newline"),
        (b"half a secret: " + SECRET[:9].encode(), b"half a secret: [MASKED:truncated]"),
    ],
    ids=["plain", "literal-prefix"],
)
def test_output_read_before_a_sigkill_of_the_recorder_is_in_the_log(
    tmp_path: Path, tail: bytes, logged_tail: bytes
) -> None:
    """The recorder holds back a tail (up to 8 KiB while output flows, a possible secret start
    when quiet); it is kept, masked, in pending.bin and appended when the session is sealed."""
    body = b"".join(b"line %05d of the build log\n" % i for i in range(3000))
    data_file = tmp_path / "data"
    data_file.write_bytes(body + tail)
    agent = (
        "import os, sys, time\n"
        f"os.write(1, open({str(data_file)!r}, 'rb').read())\n"
        "time.sleep(60)\n"
    )
    (tmp_path / "airlock.yaml").write_text("mask: {env: [K]}\n")
    proc = subprocess.Popen(
        [
            AIRLOCK,
            "run",
            "--policy",
            str(tmp_path / "airlock.yaml"),
            "--sessions",
            str(tmp_path / "s"),
            "--pty",
            "never",
            "--",
            sys.executable,
            "-c",
            agent,
        ],
        env=clean_env(tmp_path, K=SECRET),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(lambda: list((tmp_path / "s").glob("*/events.jsonl")), "the session")
        session = only_session(tmp_path / "s")
        expected = body + logged_tail
        _wait_for(
            lambda: _logged_output(session) + _pending_output(session) == expected,
            "the recorder to take in every byte",
        )
    finally:
        proc.kill()
        proc.wait()
    assert run_airlock(tmp_path, "seal", str(session)).returncode == 0
    assert _logged_output(session) == expected  # exactly, nothing lost, nothing twice
    assert SECRET[:9].encode() not in (session / "events.jsonl").read_bytes()
    assert not (session / "pending.bin").exists()
    assert run_airlock(tmp_path, "verify", "--allow-incomplete", str(session)).returncode == 0
