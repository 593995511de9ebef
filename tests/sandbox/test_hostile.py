"""A hostile agent in the sandbox (issue 10): it tries every escape, and the test checks from
OUTSIDE that each was blocked: host listeners heard nothing, files did not appear, the upstream
database saw no direct login, the sealed log verifies and holds no forgery, no process outlived
the session.

HOSTILE_SANDBOX_MODE=off runs the same agent uncontained: then these tests fail (the old
behaviour), which is how they were checked.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests.support.postgres import PostgresCluster

pytestmark = [
    pytest.mark.service,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
]

AIRLOCK = str(Path(sys.executable).parent / "airlock")
MODE = os.environ.get("HOSTILE_SANDBOX_MODE", "required")
AGENT = Path(__file__).with_name("hostile_agent.py")
DB = "sandboxdb"
USER = "sandbox_app"
HELD_VAR = "APPDB_PASSWORD"
DOCKER_SOCKET = "/run/docker.sock"


class Listener:
    """TCP and UDP on 127.0.0.1 (and a Unix socket) that record whatever reaches them."""

    def __init__(self, unix_path: str | None = None) -> None:
        self.heard: list[bytes] = []
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.unix: socket.socket | None = None
        self.unix_path = unix_path
        if unix_path is not None:
            self.unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.unix.bind(unix_path)
            self.unix.listen(8)
        for sock in (self.tcp, self.unix):
            if sock is not None:
                threading.Thread(target=self._accept, args=(sock,), daemon=True).start()
        threading.Thread(target=self._recv_udp, daemon=True).start()

    def _accept(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = sock.accept()
                with conn:
                    self.heard.append(b"connect:" + conn.recv(65536))

    def _recv_udp(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                self.heard.append(b"udp:" + self.udp.recv(65536))

    def close(self) -> None:
        for sock in (self.tcp, self.udp, self.unix):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        if self.unix_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.unix_path)


@pytest.fixture
def listener() -> Iterator[Listener]:
    docker = None if os.path.exists(DOCKER_SOCKET) else DOCKER_SOCKET
    heard = Listener(docker)
    yield heard
    heard.close()


@pytest.fixture(scope="module")
def app_db(postgres_cluster: PostgresCluster) -> tuple[PostgresCluster, str]:
    password = "held-" + secrets.token_hex(12)
    with psycopg.connect(postgres_cluster.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {USER} LOGIN PASSWORD '{password}'")
        conn.execute(f"CREATE DATABASE {DB} OWNER {USER}")
    return postgres_cluster, password


def _policy(tmp_path: Path, cluster: PostgresCluster) -> Path:
    path = tmp_path / "airlock.yaml"
    path.write_text(
        "gateways:\n"
        "  - name: appdb\n"
        "    kind: postgres\n"
        "    listen: 127.0.0.1:0\n"
        f"    upstream: {{host: 127.0.0.1, port: {cluster.port}, database: {DB}, tls: disable}}\n"
        f"    credential: {{env: {{user: APPDB_USER, password: {HELD_VAR}}}}}\n"
        "approvals: {backend: deny}\n"
    )
    return path


def _env(tmp_path: Path, password: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "GITHUB_", "CI_"))}
    env.update({"APPDB_USER": USER, HELD_VAR: password, "XDG_CONFIG_HOME": str(tmp_path / "cfg")})
    return env


def _events(workspace: Path) -> tuple[Path, list[dict[str, Any]]]:
    [session] = list((workspace / ".airlock" / "sessions").iterdir())
    lines = (session / "events.jsonl").read_text().splitlines()
    return session, [json.loads(line) for line in lines if line.startswith("{")]


def _alive_with(token: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if token.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
    return found


def test_a_hostile_agent_gets_nothing_out(
    tmp_path: Path, app_db: tuple[PostgresCluster, str], listener: Listener
) -> None:
    cluster, password = app_db
    workspace = tmp_path / "ws"
    outside = tmp_path / "outside"
    workspace.mkdir()
    outside.mkdir()
    shutil.copy(AGENT, workspace / "agent.py")
    token = "daemon-" + secrets.token_hex(6)
    marker_table = "pwned_" + secrets.token_hex(4)
    key = tmp_path / "cfg" / "airlock" / "signing-key.pem"
    master, slave = os.openpty()  # Airlock's terminal: the agent tries TIOCSTI into it
    argv = [AIRLOCK, "run", "--policy", str(_policy(tmp_path, cluster)), "--pty", "never",
            "--sandbox", MODE, "--", "/usr/bin/python3", str(workspace / "agent.py"),
            str(workspace / "config.json")]  # fmt: skip
    proc = subprocess.Popen(
        argv, cwd=workspace, env=_env(tmp_path, password), stdin=slave,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    config = {
        "airlock_pid": proc.pid,
        "workspace": str(workspace),
        "sessions": str(workspace / ".airlock" / "sessions"),
        "secret_files": [str(key), str(tmp_path / "state" / "job.json"), "/etc/shadow"],
        "outside_files": [str(outside / "escaped"), str(tmp_path / "escaped")],
        "outside_dir": str(outside),
        "tcp": [["127.0.0.1", listener.tcp.getsockname()[1]]],
        "udp": [["127.0.0.1", listener.udp.getsockname()[1]]],
        "docker_sockets": ["/var/run/docker.sock", DOCKER_SOCKET],
        "upstream": {"port": cluster.port, "user": USER, "db": DB, "marker_table": marker_table},
        "held_var": HELD_VAR,
        "late_marker": str(workspace / "late-marker"),
        "token": token,
    }
    (workspace / "config.tmp").write_text(json.dumps(config))
    (workspace / "config.tmp").rename(workspace / "config.json")  # the agent waits for it
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:  # uncontained, the agent froze its own tracer
        proc.kill()
        out, err = proc.communicate()
        for pid in _alive_with(str(workspace)):
            with contextlib.suppress(OSError):
                os.kill(int(pid), signal.SIGKILL)
    os.set_blocking(slave, False)
    typed = b""  # what was typed into Airlock's terminal and never read
    with contextlib.suppress(BlockingIOError, OSError):
        typed = os.read(slave, 4096)
    os.close(master)
    os.close(slave)
    alive = _alive_with(token)
    (workspace / "go").touch()
    with psycopg.connect(cluster.dsn(USER, password, DB)) as conn:
        logged_in = conn.execute("SELECT to_regclass(%s)", (marker_table,)).fetchone() != (None,)

    # Every wall, checked from outside; all breaches are listed at once.
    breaches = {
        "a host listener heard the agent (TCP, UDP/DNS or docker socket)": listener.heard != [],
        "a file appeared outside the workspace": any(outside.iterdir())
        or (tmp_path / "escaped").exists(),
        "sudo worked": (outside / "sudo-worked").exists(),
        "TIOCSTI typed into Airlock's terminal": b"PWNED" in typed,
        "a process outlived the session": alive != [],
        "the daemon acted after the session": (workspace / "late-marker").exists(),
        "ptrace attached": (workspace / "ptrace.json").exists()
        and json.loads((workspace / "ptrace.json").read_text()) != {},
        "the held password logged in to the upstream directly": logged_in,
        "Airlock did not outlive the agent": proc.returncode != 0,
    }
    assert [wall for wall, broken in breaches.items() if broken] == [], err.decode()
    assert b"hostile agent done" in out
    assert (workspace / "daemon-started").exists()
    # The log is sealed complete, verifies, and holds no forgery and no secret.
    session, events = _events(workspace)
    assert json.loads((session / "manifest.json").read_text())["status"] == "complete"
    verify = subprocess.run(
        [AIRLOCK, "verify", str(session)], env=_env(tmp_path, ""), capture_output=True, check=False
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    log = (session / "events.jsonl").read_text()
    assert "forged-exec" not in log and "forged-line" not in log
    assert password not in log and key.read_text() not in log
    # strace, outside, recorded the agent and what it started inside.
    execs = [e["data"]["argv"] for e in events if e["type"] == "process.exec"]
    assert any(str(workspace / "agent.py") in argv for argv in execs)
    assert any(argv[:1] == ["sudo"] for argv in execs)
    assert any(argv[:1] == ["setsid"] for argv in execs)
    status = next(e["data"] for e in events if e["type"] == "sandbox.status")
    assert status["active"] is True
    assert [p["id"] for p in status["probes"] if not p["ok"]] == []


def test_gateways_work_inside_the_sandbox(
    tmp_path: Path, app_db: tuple[PostgresCluster, str]
) -> None:
    cluster, password = app_db
    workspace = tmp_path / "ws"
    workspace.mkdir()
    script = 'echo "sees:${APPDB_PASSWORD:-none}"; psql -X -At -c "SELECT 40 + 2"'
    result = subprocess.run(
        [AIRLOCK, "run", "--policy", str(_policy(tmp_path, cluster)), "--pty", "never",
         "--sandbox", MODE, "--", "sh", "-c", script],
        cwd=workspace, env=_env(tmp_path, password), capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "sees:none" in result.stdout
    assert "42" in result.stdout.split()
    _, events = _events(workspace)
    assert "SELECT 40 + 2" in [e["data"]["sql"] for e in events if e["type"] == "db.query"]
    status = next(e["data"] for e in events if e["type"] == "sandbox.status")
    assert status["bridged_ports"] != []
