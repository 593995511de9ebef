"""Central mode, end to end: the gateway runs off the runner (`airlock gateway --broker`), holds
the database password, and admits a client only with a ticket the broker issued to a job for
that gateway; the job never sees the password, the gateway never sees a job or OIDC token."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
from tests.broker.conftest import AUDIENCE, broker_yaml, central_gateways_yaml
from tests.support.broker_server import BrokerServer
from tests.support.oidc_issuer import OIDCIssuer
from tests.support.postgres import PostgresCluster

from airlock.audit import SigningKey
from airlock.broker.app import create_app
from airlock.broker.service import Broker
from airlock.broker.state import StateStore
from airlock.brokerclient import BrokerClient
from airlock.policy.broker_config import parse_broker_config

AIRLOCK = str(Path(sys.executable).parent / "airlock")


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _psql(port: int, password: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "5"}
    return subprocess.run(
        ["psql", "-X", "-At", "-h", "127.0.0.1", "-p", str(port), "-U", "agent", "-d", "x", "-c", "SELECT 42"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_central_gateway_admits_only_broker_tickets(
    issuer: OIDCIssuer, tmp_path: Path, postgres_cluster: PostgresCluster
) -> None:
    db_password = "central-" + secrets.token_hex(8)
    with psycopg.connect(postgres_cluster.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE central_app LOGIN PASSWORD '{db_password}'")
        conn.execute("CREATE DATABASE centraldb OWNER central_app")
    gateway_token = secrets.token_urlsafe(24)
    text = broker_yaml(
        issuer.url, f"sqlite:///{tmp_path / 'b.db'}", tickets=True
    ) + central_gateways_yaml(gateway_token)
    config = parse_broker_config(text)
    store = StateStore(config.state)
    broker = Broker(config, store=store, key=SigningKey.generate())
    port = _port()
    policy = tmp_path / "central.yaml"
    policy.write_text(
        "gateways:\n"
        f"  - {{name: appdb, kind: postgres, listen: '127.0.0.1:{port}',"
        f" upstream: {{host: 127.0.0.1, port: {postgres_cluster.port}, database: centraldb, tls: disable}},"
        " credential: {env: {user: DB_USER, password: DB_PASSWORD}}}\n"
    )
    with BrokerServer(create_app(broker)) as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(
            DB_USER="central_app",
            DB_PASSWORD=db_password,
            AIRLOCK_GATEWAY_TOKEN=gateway_token,
            XDG_CONFIG_HOME=str(tmp_path / "cfg"),
        )
        proc = subprocess.Popen(
            [AIRLOCK, "gateway", "--policy", str(policy), "--sessions", str(tmp_path / "s"), "--broker", server.url],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while True:
                with socket.socket() as probe:
                    if probe.connect_ex(("127.0.0.1", port)) == 0:
                        break
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
            client = BrokerClient(server.url)
            job = client.exchange(issuer.mint(issuer.github_claims(AUDIENCE)), [])
            ticket = client.gateway_ticket(job.job_token, "appdb")["ticket"]
            client.close()
            ok = _psql(port, ticket)
            assert ok.stdout.strip() == "42", ok.stderr
            assert _psql(port, "not-a-ticket-" + secrets.token_hex(8)).returncode != 0
            assert _psql(port, job.job_token).returncode != 0  # a job token is not a ticket
            unknown = httpx.post(
                f"{server.url}/v1/gateway-tickets",
                json={"gateway": "nope"},
                headers={"Authorization": f"Bearer {job.job_token}"},
            )
            assert unknown.status_code == 400
            forged = httpx.post(
                f"{server.url}/v1/gateway-tickets/check",
                json={"gateway": "appdb", "ticket": ticket},
                headers={"Authorization": "Bearer wrong-gateway-token"},
            )
            assert forged.status_code == 403
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    broker.close()
    store.close()
    log = next((tmp_path / "s").iterdir()) / "events.jsonl"
    assert "SELECT 42" in log.read_text()
    assert db_password not in log.read_text()
