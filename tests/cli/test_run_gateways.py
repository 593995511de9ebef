"""`airlock run` in held mode, end to end: the policy's PostgreSQL gateway holds the upstream
password, the agent's psql talks to 127.0.0.1 with a ticket, guardrails deny or hold statements,
masked columns never reach the agent, and every statement is in the session log."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests.support.postgres import PostgresCluster

from airlock.gate.file import decide, pending

AIRLOCK = str(Path(sys.executable).parent / "airlock")
DB = "heldapp"
USER = "held_app"


@pytest.fixture(scope="module")
def app_db(postgres_cluster: PostgresCluster) -> tuple[PostgresCluster, str]:
    password = "held-" + secrets.token_hex(12)
    with psycopg.connect(postgres_cluster.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {USER} LOGIN PASSWORD '{password}'")
        conn.execute(f"CREATE DATABASE {DB} OWNER {USER}")
    with psycopg.connect(postgres_cluster.dsn(USER, password, DB), autocommit=True) as conn:
        conn.execute("CREATE TABLE users (id int, email text, password text)")
        conn.execute("INSERT INTO users VALUES (1, 'ada@example.com', 'hunter2-pw-value')")
        conn.execute("CREATE TABLE scratch (id int)")
    return postgres_cluster, password


def _policy(tmp_path: Path, cluster: PostgresCluster, approvals: str) -> Path:
    path = tmp_path / "airlock.yaml"
    path.write_text(
        f"""
gateways:
  - name: appdb
    kind: postgres
    listen: 127.0.0.1:0
    upstream: {{host: 127.0.0.1, port: {cluster.port}, database: {DB}, tls: disable}}
    credential: {{env: {{user: APPDB_USER, password: APPDB_PASSWORD}}}}
    mask_columns: ["*.password"]
guardrails:
  - {{id: no-drop-users, sql: {{kinds: [drop], tables: [users]}}, action: deny}}
  - {{id: drop-needs-dba, sql: {{kinds: [drop, truncate]}}, action: require_approval}}
approvals: {approvals}
"""
    )
    return path


def _run(
    tmp_path: Path, policy: Path, password: str, script: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "GITHUB_", "CI_"))}
    env.update(APPDB_USER=USER, APPDB_PASSWORD=password, XDG_CONFIG_HOME=str(tmp_path / "cfg"))
    return subprocess.run(
        [AIRLOCK, "run", "--policy", str(policy), "--sessions", str(tmp_path / "s"), "--", "sh", "-c", script],
        env=env, capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )  # fmt: skip


def _events(tmp_path: Path) -> list[dict[str, Any]]:
    [session] = list((tmp_path / "s").iterdir())
    return [json.loads(line) for line in (session / "events.jsonl").read_text().splitlines()]


def test_held_credential_masked_columns_and_a_denied_drop(
    tmp_path: Path, app_db: tuple[PostgresCluster, str]
) -> None:
    cluster, password = app_db
    policy = _policy(tmp_path, cluster, "{backend: deny}")
    script = (
        'echo "sees-password:${APPDB_PASSWORD:-no}"; '
        'psql -X -At -c "SELECT email, password FROM users"; '
        'psql -X -At -c "DROP TABLE users"; echo "drop-exit:$?"'
    )
    result = _run(tmp_path, policy, password, script)
    assert result.returncode == 0, result.stderr
    assert "sees-password:no" in result.stdout  # the held credential never reaches the agent
    assert "ada@example.com|[MASKED:" in result.stdout  # the password column is masked
    assert "hunter2-pw-value" not in result.stdout
    assert "no-drop-users" in result.stdout + result.stderr
    assert "drop-exit:1" in result.stdout
    with psycopg.connect(cluster.dsn(USER, password, DB)) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (1,)  # still there
    events = _events(tmp_path)
    log = (next((tmp_path / "s").iterdir()) / "events.jsonl").read_text()
    assert password not in log and "hunter2-pw-value" not in log
    queries = [e["data"]["sql"] for e in events if e["type"] == "db.query"]
    assert "SELECT email, password FROM users" in queries
    decisions = [e["data"] for e in events if e["type"] == "guardrail.decision"]
    assert any(d["rule_id"] == "no-drop-users" and d["action"] == "deny" for d in decisions)
    started = next(e["data"] for e in events if e["type"] == "gateway.started")
    assert started["name"] == "appdb"
    assert started["row_path"] in ("compiled", "python")  # which row path runs is on record
    assert started["io_path"] in ("compiled", "python")  # and which I/O path
    assert "APPDB_PASSWORD" in started["withheld"]


def test_a_held_drop_runs_once_after_approval(
    tmp_path: Path, app_db: tuple[PostgresCluster, str]
) -> None:
    cluster, password = app_db
    approvals = tmp_path / "approvals"
    policy = _policy(tmp_path, cluster, f"{{backend: file, dir: {approvals}, timeout: 60s}}")

    def approve_when_asked() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            waiting = list(pending(approvals))
            if waiting:
                decide(approvals, waiting[0]["request_id"], approved=True, by="dba-alice")
                return
            time.sleep(0.1)

    clicker = threading.Thread(target=approve_when_asked)
    clicker.start()
    result = _run(tmp_path, policy, password, 'psql -X -At -c "DROP TABLE scratch"; echo "exit:$?"')
    clicker.join()
    assert "exit:0" in result.stdout, result.stdout + result.stderr
    with psycopg.connect(cluster.dsn(USER, password, DB)) as conn:
        assert conn.execute("SELECT to_regclass('scratch')").fetchone() == (None,)
    types = [e["type"] for e in _events(tmp_path)]
    assert types.count("approval.requested") == 1
    assert types.count("approval.decided") == 1


def test_standalone_gateway_serves_until_sigterm_and_seals(
    tmp_path: Path, app_db: tuple[PostgresCluster, str]
) -> None:
    cluster, password = app_db
    policy = _policy(tmp_path, cluster, "{backend: deny}")
    env_file = tmp_path / "agent.env"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(APPDB_USER=USER, APPDB_PASSWORD=password, XDG_CONFIG_HOME=str(tmp_path / "cfg"))
    proc = subprocess.Popen(
        [AIRLOCK, "gateway", "--policy", str(policy), "--sessions", str(tmp_path / "s"), "--env-file", str(env_file)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while not env_file.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.1)
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"
    agent = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    assert password not in env_file.read_text()
    query = subprocess.run(
        ["psql", "-X", "-At", "-c", "SELECT id FROM users"],
        env={"PATH": os.environ["PATH"], **{k: v for k, v in agent.items() if k.startswith("PG")}},
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert query.stdout.strip() == "1", query.stderr
    proc.terminate()
    assert proc.wait(timeout=30) == 0
    [session] = list((tmp_path / "s").iterdir())
    manifest = json.loads((session / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert "SELECT id FROM users" in (session / "events.jsonl").read_text()


def test_http_gateway_injects_the_held_token(tmp_path: Path) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from tests.support.broker_server import BrokerServer

    held = "held-api-token-" + secrets.token_hex(8)
    seen: list[str] = []

    async def whoami(request: Request) -> JSONResponse:
        seen.append(request.headers.get("authorization", ""))
        return JSONResponse({"login": "octocat"})

    upstream = Starlette(routes=[Route("/user", whoami)])
    with BrokerServer(upstream) as server:
        policy = tmp_path / "airlock.yaml"
        policy.write_text(
            "gateways:\n"
            f"  - {{name: forge, kind: http, listen: '127.0.0.1:0', upstream: '{server.url}',"
            " credential: {env: {bearer: FORGE_TOKEN}}}\n"
        )
        # FORGE_TOKEN held the real token; inside the session it is the gateway's ticket.
        agent = (
            "import os, urllib.request\n"
            "print('sees-token:', os.environ.get('FORGE_TOKEN', 'no'))\n"
            "req = urllib.request.Request(os.environ['FORGE_URL'] + '/user',"
            " headers={'Authorization': 'Bearer ' + os.environ['FORGE_TOKEN']})\n"
            "print(urllib.request.urlopen(req).read().decode())\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "CI_"))}
        env.update(FORGE_TOKEN=held, XDG_CONFIG_HOME=str(tmp_path / "cfg"))
        result = subprocess.run(
            [AIRLOCK, "run", "--policy", str(policy), "--sessions", str(tmp_path / "s"), "--",
             sys.executable, "-c", agent],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert '"login":"octocat"' in result.stdout
    assert seen == [f"Bearer {held}"]  # the upstream got the held token, injected by the gateway
    assert held not in result.stdout
    assert "sees-token: [MASKED:gateway-ticket" in result.stdout  # the ticket, never shown
    events = _events(tmp_path)
    assert [e["data"]["status"] for e in events if e["type"] == "http.response"] == [200]
    log = (next((tmp_path / "s").iterdir()) / "events.jsonl").read_text()
    assert held not in log


def test_gateway_logs_in_with_a_grant_the_broker_issued(
    tmp_path: Path, app_db: tuple[PostgresCluster, str]
) -> None:
    # What `airlock credentials --grant appdb-login --hold` leaves: the values in the job state,
    # nothing exported. The gateway logs in with them; the agent only gets a ticket.
    from airlock.brokerclient import JobState, save_job_state

    cluster, password = app_db
    lease = {
        "lease_id": "lgrant",
        "grant": "appdb-login",
        "expires_at": time.time() + 900,
        "values": {"PGUSER": USER, "PGPASSWORD": password},
    }
    state_dir = tmp_path / "state"
    save_job_state(JobState("http://127.0.0.1:1", "job-token", "rule", (lease,)), state_dir)
    policy = tmp_path / "airlock.yaml"
    policy.write_text(
        "gateways:\n"
        f"  - {{name: appdb, kind: postgres, listen: '127.0.0.1:0',"
        f" upstream: {{host: 127.0.0.1, port: {cluster.port}, database: {DB}, tls: disable}},"
        " credential: {grant: appdb-login}}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "GITHUB_", "CI_"))}
    env.update(AIRLOCK_STATE_DIR=str(state_dir), XDG_CONFIG_HOME=str(tmp_path / "cfg"))
    script = 'psql -X -At -c "SELECT current_user"; echo "pw:$PGPASSWORD"'
    result = subprocess.run(
        [AIRLOCK, "run", "--policy", str(policy), "--sessions", str(tmp_path / "s"), "--", "sh", "-c", script],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # current_user is the granted role; as an issued value it is masked like the password
    assert result.stdout.splitlines()[0] == "[MASKED:credential:appdb-login]"
    assert password not in result.stdout
    assert "pw:[MASKED:gateway-ticket" in result.stdout  # the agent's PGPASSWORD is the ticket
    log = (next((tmp_path / "s").iterdir()) / "events.jsonl").read_text()
    assert password not in log


def test_a_grant_that_was_not_issued_is_a_clear_error(tmp_path: Path) -> None:
    policy = tmp_path / "airlock.yaml"
    policy.write_text(
        "gateways:\n"
        "  - {name: appdb, kind: postgres, listen: '127.0.0.1:0',"
        " upstream: {host: 127.0.0.1, port: 1, database: x}, credential: {grant: appdb-login}}\n"
    )
    env = {
        **os.environ,
        "AIRLOCK_STATE_DIR": str(tmp_path / "none"),
        "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
    }
    result = subprocess.run(
        [AIRLOCK, "run", "--policy", str(policy), "--sessions", str(tmp_path / "s"), "--", "true"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 80
    assert "airlock credentials --grant appdb-login --hold" in result.stderr


def test_a_hold_pending_when_the_command_ends_is_in_the_sealed_log(
    tmp_path: Path, app_db: tuple[PostgresCluster, str]
) -> None:
    """A client outside the agent's process tree (so no leftover-stopping ends it first) holds a
    DROP when the command ends: the gateways close before ``session.end``, so the hold's outcome is
    sealed into the log instead of being written after the seal and lost."""
    cluster, password = app_db
    with psycopg.connect(cluster.dsn(USER, password, DB), autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (id int)")
    approvals = tmp_path / "approvals"
    policy = _policy(tmp_path, cluster, f"{{backend: file, dir: {approvals}, timeout: 60s}}")
    url_file, go_file = tmp_path / "url", tmp_path / "go"
    script = f'echo "$DATABASE_URL" > {url_file}; while [ ! -e {go_file} ]; do sleep 0.05; done'
    errors: list[BaseException] = []

    def outside_client() -> None:
        while not url_file.exists() or not url_file.read_text().strip():
            time.sleep(0.05)
        try:
            with psycopg.connect(url_file.read_text().strip(), autocommit=True) as conn:
                conn.execute("DROP TABLE kept")
        except psycopg.Error as exc:  # the gateway ends the held statement at session end
            errors.append(exc)

    def release_when_held() -> None:
        while not list(pending(approvals)):
            time.sleep(0.05)
        go_file.touch()

    threads = [threading.Thread(target=outside_client), threading.Thread(target=release_when_held)]
    for thread in threads:
        thread.start()
    result = _run(tmp_path, policy, password, script)
    for thread in threads:
        thread.join(timeout=60)
    assert result.returncode == 0, result.stderr
    assert errors, "the held DROP must not succeed"
    events = _events(tmp_path)
    types = [e["type"] for e in events]
    assert types.count("approval.requested") == 1
    ended = types.index("session.end")
    assert "approval.cancelled" in types[:ended], types[-8:]
    with psycopg.connect(cluster.dsn(USER, password, DB)) as conn:
        assert conn.execute("SELECT to_regclass('kept')").fetchone() == ("kept",)
    verify = subprocess.run(
        [AIRLOCK, "verify", str(next((tmp_path / "s").iterdir()))],
        capture_output=True, text=True, check=False,
        env={**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "cfg")},
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
