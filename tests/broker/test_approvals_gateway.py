"""End to end through the PostgreSQL gateway: psql sends DROP TABLE, the gateway holds it on a
github-check approval at the broker, a reviewer clicks on GitHub, and the statement runs once —
or is refused with SQLSTATE 42501 when denied or unanswered.

(The gateways are not yet started by ``airlock run``; this drives the gateway the way it will.)
"""

from __future__ import annotations

import json
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests.broker import approvals_support
from tests.broker.approvals_support import (
    AUDIENCE,
    FakeGitHub,
    FakeGitLab,
    WebhookSchemas,
    build_broker,
    check_run_click,
    github_headers,
    post,
)
from tests.support.broker_server import BrokerServer
from tests.support.oidc_issuer import OIDCIssuer
from tests.support.postgres import PostgresCluster

from airlock.audit import SigningKey
from airlock.broker.app import create_app
from airlock.brokerclient import BrokerClient
from airlock.gate import approver
from airlock.gate.broker import ForgeTarget
from airlock.gate.github_check import GitHubCheckBackend
from airlock.gateway.postgres.server import ThreadedGateway, UpstreamLogin, start_in_thread
from airlock.gateway.tickets import Ticket
from airlock.mask import Masker, MaskSettings
from airlock.policy.gateways import PostgresGatewayConfig
from airlock.policy.guardrails import GuardrailDefaults, GuardrailRule

forges = approvals_support.forges
github_openapi = approvals_support.github_openapi
webhook_schemas = approvals_support.webhook_schemas

ROLE, DB = "appr_app", "apprdb"


@dataclass
class Upstream:
    cluster: PostgresCluster
    password: str

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.cluster.dsn(ROLE, self.password, DB), autocommit=True) as conn:
            cursor = conn.execute(sql)
            return list(cursor.fetchall()) if cursor.description else []


@pytest.fixture(scope="module")
def upstream(postgres_cluster: PostgresCluster) -> Upstream:
    password = secrets.token_urlsafe(16)
    with psycopg.connect(postgres_cluster.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{password}'")
        conn.execute(f"CREATE DATABASE {DB} OWNER {ROLE}")
    return Upstream(postgres_cluster, password)


@dataclass
class Setup:
    gateway: ThreadedGateway
    ticket: Ticket
    github: FakeGitHub
    schemas: WebhookSchemas
    url: str
    events: list[tuple[str, dict[str, Any]]]

    def psql(self, sql: str) -> subprocess.CompletedProcess[str]:
        host, port = self.gateway.address
        env = {"PGPASSWORD": self.ticket.value, "PATH": "/usr/bin:/bin", "PGCONNECT_TIMEOUT": "5"}
        return subprocess.run(
            ["psql", "-X", "-h", host, "-p", str(port), "-U", "agent", "-d", "x",
             "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose", "-At", "-c", sql],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    def click_when_posted(self, login: str, *, approve: bool) -> threading.Thread:
        def click() -> None:
            deadline = time.monotonic() + 20
            while not self.github.check_runs and time.monotonic() < deadline:
                time.sleep(0.02)
            run_id, check = next(iter(self.github.check_runs.items()))
            actions = self.github.created_actions[run_id]
            payload = check_run_click(
                self.schemas,
                check_run_id=run_id,
                external_id=check["external_id"],
                identifier=actions[0 if approve else 1]["identifier"],
                login=login,
            )
            raw = json.dumps(payload).encode()
            post(f"{self.url}/v1/webhooks/github", raw, github_headers(raw, event="check_run"))

        thread = threading.Thread(target=click)
        thread.start()
        return thread


@pytest.fixture
def make_setup(
    issuer: OIDCIssuer,
    tmp_path: Path,
    upstream: Upstream,
    forges: tuple[FakeGitHub, FakeGitLab],
    webhook_schemas: WebhookSchemas,
) -> Iterator[Any]:
    broker, store = build_broker(issuer.url, f"sqlite:///{tmp_path / 'broker.db'}")
    github = forges[0]
    github.add_pull(12, author="pr-author")
    github.permissions["alice"] = "write"
    claims = issuer.github_claims(AUDIENCE)
    cleanup: list[Any] = []

    def make(timeout: float = 30) -> Setup:
        server = BrokerServer(create_app(broker)).__enter__()
        cleanup.append(lambda: server.__exit__(None, None, None))
        client = BrokerClient(server.url)
        job = client.exchange(issuer.mint(claims), ["deploy"])
        client.close()
        events: list[tuple[str, dict[str, Any]]] = []
        record = lambda t, d: events.append((str(t), dict(d)))  # noqa: E731
        backend = GitHubCheckBackend(
            server.url, job.job_token, key=SigningKey.generate(), record=record,
            target=ForgeTarget(pull_request=12),
        )  # fmt: skip
        cleanup.append(backend.close)
        approve = approver(
            backend, timeout, repository="acme/api", commit=claims["sha"], run_id=claims["run_id"]
        )
        ticket = Ticket.issue("sess-e2e", "appdb")
        gateway = start_in_thread(
            PostgresGatewayConfig.model_validate(
                {
                    "name": "appdb",
                    "kind": "postgres",
                    "listen": "127.0.0.1:0",
                    "upstream": {
                        "host": "127.0.0.1",
                        "port": upstream.cluster.port,
                        "database": DB,
                        "tls": "disable",
                    },
                    "credential": {"env": {"user": "PGUSER_UP", "password": "PGPASSWORD_UP"}},
                }
            ),
            masker=Masker(MaskSettings()),
            record=record,
            approve=approve,
            ticket=ticket,
            guardrails=[
                GuardrailRule.model_validate(
                    {"id": "no-drop", "sql": {"kinds": ["drop"]}, "action": "require_approval"}
                )
            ],
            defaults=GuardrailDefaults(),
            login=UpstreamLogin(ROLE, upstream.password),
        )
        cleanup.append(gateway.close)
        return Setup(gateway, ticket, github, webhook_schemas, server.url, events)

    yield make
    for step in reversed(cleanup):
        step()
    broker.close()
    store.close()


def _table(upstream: Upstream, name: str) -> bool:
    rows = upstream.query(f"SELECT to_regclass('public.{name}') IS NOT NULL")
    return bool(rows[0][0])


def test_drop_table_is_held_then_runs_once_after_the_click(
    make_setup: Any, upstream: Upstream
) -> None:
    upstream.query("CREATE TABLE victim_a (id int)")
    setup: Setup = make_setup()
    clicker = setup.click_when_posted("alice", approve=True)
    result = setup.psql("DROP TABLE victim_a")
    clicker.join(timeout=30)
    assert result.returncode == 0, result.stderr
    assert not _table(upstream, "victim_a")
    kinds = [t for t, _ in setup.events]
    assert kinds.count("approval.requested") == 1 and kinds.count("approval.decided") == 1
    decided = next(d for t, d in setup.events if t == "approval.decided")
    assert decided["approved"] is True and decided["by"] == "github:alice"
    (check,) = setup.github.check_runs.values()
    assert "DROP TABLE victim_a" in check["name"] and check["conclusion"] == "success"


def test_denied_drop_table_fails_with_42501_and_the_table_stays(
    make_setup: Any, upstream: Upstream
) -> None:
    upstream.query("CREATE TABLE victim_b (id int)")
    setup: Setup = make_setup()
    clicker = setup.click_when_posted("alice", approve=False)
    result = setup.psql("DROP TABLE victim_b")
    clicker.join(timeout=30)
    assert result.returncode != 0 and "42501" in result.stderr
    assert _table(upstream, "victim_b")


def test_unanswered_drop_table_expires_to_42501(make_setup: Any, upstream: Upstream) -> None:
    upstream.query("CREATE TABLE victim_c (id int)")
    setup: Setup = make_setup(timeout=1.0)
    result = setup.psql("DROP TABLE victim_c")
    assert result.returncode != 0 and "42501" in result.stderr
    assert _table(upstream, "victim_c")
    assert [t for t, _ in setup.events if t.startswith("approval.")][-1] == "approval.expired"
