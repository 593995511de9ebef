"""Fixtures: a real PostgreSQL cluster, an application role and database, and a running gateway.

``make_gateway(**overrides)`` starts a gateway (in its own thread and loop, as ``airlock run``
does) in front of the cluster; the events it records are collected in ``gw.events``.
"""

from __future__ import annotations

import secrets
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from tests.support.postgres import PostgresCluster, postgres_cluster  # noqa: F401 (fixture)

from airlock.errors import RecordingError
from airlock.gate.interface import Operation
from airlock.gateway.postgres.server import ThreadedGateway, UpstreamLogin, start_in_thread
from airlock.gateway.tickets import Ticket, TicketCheck
from airlock.mask import Masker, MaskSettings
from airlock.policy.gateways import PostgresGatewayConfig
from airlock.policy.guardrails import GuardrailDefaults, GuardrailRule

APP_USER = "gw_app"
APP_DB = "gwdb"
SECRET_IN_DATA = "sk_live_" + "Q" * 24  # a literal secret registered with the masker


@dataclass
class Upstream:
    cluster: PostgresCluster
    password: str = field(repr=False)

    def superuser(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.cluster.dsn(dbname=APP_DB), autocommit=True)


@dataclass
class RunningGateway:
    handle: ThreadedGateway
    ticket: Ticket
    events: list[tuple[str, dict[str, Any]]]
    approvals: list[Operation]

    @property
    def host(self) -> str:
        return self.handle.address[0]

    @property
    def port(self) -> int:
        return self.handle.address[1]

    def dsn(self, password: str | None = None, **extra: str) -> str:
        password = self.ticket.value if password is None else password
        parts = {"host": self.host, "port": str(self.port), "dbname": "ignored", "user": "agent"}
        parts.update({"password": password, "sslmode": "disable", **extra})
        return " ".join(f"{k}={v}" for k, v in parts.items())

    def url(self) -> str:
        return f"postgresql://agent:{self.ticket.value}@{self.host}:{self.port}/ignored"

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        return [data for t, data in list(self.events) if t == type_]

    def psql(self, sql: str, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        env = {"PGPASSWORD": self.ticket.value, "PATH": "/usr/bin:/bin", "PGCONNECT_TIMEOUT": "5"}
        return subprocess.run(
            ["psql", "-X", "-h", self.host, "-p", str(self.port), "-U", "agent", "-d", "x",
             "-v", "ON_ERROR_STOP=1", "-At", "-c", sql, *args],
            env=env, capture_output=True, text=True, timeout=60, check=check,
        )  # fmt: skip


@pytest.fixture(scope="session")
def upstream(postgres_cluster: PostgresCluster) -> Upstream:  # noqa: F811
    password = secrets.token_urlsafe(16)
    with psycopg.connect(postgres_cluster.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {APP_USER} LOGIN PASSWORD '{password}'")
        conn.execute(f"CREATE DATABASE {APP_DB} OWNER {APP_USER}")
    with psycopg.connect(postgres_cluster.dsn(APP_USER, password, APP_DB), autocommit=True) as c:
        c.execute(
            "CREATE TABLE users (id int primary key, name text, email text, password text, "
            "age int, profile jsonb)"
        )
        c.execute(
            "INSERT INTO users SELECT i, 'user' || i, 'u' || i || '@example.com', 'pw' || i, "
            "20 + i % 50, '{\"a\": 1}' FROM generate_series(1, 10) i"
        )
        c.execute("CREATE TABLE notes (id serial primary key, body text)")
        c.execute("INSERT INTO notes (body) VALUES (%s)", (f"token {SECRET_IN_DATA} here",))
        c.execute(
            "CREATE TABLE big AS SELECT i AS n, md5(i::text) AS h FROM generate_series(1, 100000) i"
        )
        c.execute("CREATE SCHEMA audit")
        c.execute("CREATE TABLE audit.log (id int, msg text)")
    return Upstream(postgres_cluster, password)


def _config(up: Upstream, /, **overrides: Any) -> PostgresGatewayConfig:
    data: dict[str, Any] = {
        "name": "appdb",
        "kind": "postgres",
        "listen": "127.0.0.1:0",
        "upstream": {"host": "127.0.0.1", "port": up.cluster.port, "database": APP_DB,
                     "tls": "disable"},
        "credential": {"env": {"user": "PGUSER_UP", "password": "PGPASSWORD_UP"}},
        "mask_columns": ["*.password", "users.email"],
        "mask_values": True,
    }  # fmt: skip
    data.update(overrides)
    return PostgresGatewayConfig.model_validate(data)


MakeGateway = Callable[..., RunningGateway]


@pytest.fixture
def make_gateway(upstream: Upstream) -> Iterator[MakeGateway]:
    started: list[ThreadedGateway] = []

    def make(
        *,
        rules: Sequence[GuardrailRule | Mapping[str, Any]] = (),
        defaults: Mapping[str, Any] | None = None,
        approve: Callable[[Operation], Any] | None = None,
        login: UpstreamLogin | None = None,
        startup_timeout: float = 10.0,
        ticket_check: TicketCheck | None = None,
        refuse_record: Callable[[str, Mapping[str, Any]], bool] | None = None,
        **overrides: Any,
    ) -> RunningGateway:
        events: list[tuple[str, dict[str, Any]]] = []
        lock = threading.Lock()
        approvals: list[Operation] = []

        def record(type_: str, data: Mapping[str, Any]) -> int:
            if refuse_record is not None and refuse_record(str(type_), data):
                raise RecordingError("the session log cannot be written (test)")
            with lock:
                events.append((str(type_), dict(data)))
                return len(events)

        async def deny_all(op: Operation) -> bool:
            approvals.append(op)
            return False

        async def wrapped(op: Operation) -> bool:
            approvals.append(op)
            assert approve is not None
            result = approve(op)
            return bool(await result if hasattr(result, "__await__") else result)

        ticket = Ticket.issue("sess-test", "appdb")
        masker = Masker(MaskSettings(literals=(("env:API_SECRET", SECRET_IN_DATA),)))
        handle = start_in_thread(
            _config(upstream, **overrides),
            masker=masker,
            record=record,
            approve=wrapped if approve is not None else deny_all,
            ticket=ticket_check or ticket,
            guardrails=[GuardrailRule.model_validate(r) for r in rules],
            defaults=GuardrailDefaults.model_validate(defaults or {}),
            login=login or UpstreamLogin(APP_USER, upstream.password),
            startup_timeout=startup_timeout,
        )
        started.append(handle)
        return RunningGateway(handle, ticket, events, approvals)

    yield make
    for handle in started:
        handle.close()


@pytest.fixture
def gateway(make_gateway: MakeGateway) -> RunningGateway:
    """A gateway with the default guardrail catalogue of these tests."""
    return make_gateway(
        rules=[
            {"id": "no-drop", "sql": {"kinds": ["drop", "truncate"]}, "action": "deny"},
            {
                "id": "no-unscoped-delete",
                "sql": {"kinds": ["delete", "update"], "without_where": True},
                "action": "deny",
            },
            {
                "id": "audit-needs-ok",
                "sql": {"tables": ["audit.*"], "kinds": ["insert"]},
                "action": "require_approval",
            },
        ]
    )


@pytest.fixture
def victims(upstream: Upstream) -> Iterator[str]:
    """A table of 10 rows the agent will try to delete, owned by the gateway's login."""
    name = f"victims_{secrets.token_hex(3)}"
    with upstream.superuser() as conn:
        conn.execute(f"CREATE TABLE {name} AS SELECT i AS id FROM generate_series(1, 10) i")
        conn.execute(f"ALTER TABLE {name} OWNER TO {APP_USER}")
    yield name
    with upstream.superuser() as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")
