"""Central-mode tickets at the PostgreSQL gateway, against the real broker under uvicorn: a
ticket revoked while its statement was held refuses that statement, and a broker slow to answer
one client's ticket check never stalls the other clients (the check does not block the loop)."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import psycopg
import pytest
from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send
from tests.broker.conftest import (
    AUDIENCE,
    broker_yaml,
    central_gateways_yaml,
    issuer,  # noqa: F401 (fixture)
)
from tests.gateway.postgres.conftest import MakeGateway, RunningGateway, Upstream
from tests.support.broker_server import BrokerServer
from tests.support.oidc_issuer import OIDCIssuer

from airlock.audit import SigningKey
from airlock.broker.app import create_app
from airlock.broker.service import Broker
from airlock.broker.state import StateStore
from airlock.gateway.postgres.connection import TICKET_RULE
from airlock.gateway.tickets import BrokerTicket
from airlock.policy.broker_config import parse_broker_config

pytestmark = pytest.mark.service

GATEWAY_TOKEN = "gw-" + secrets.token_hex(12)


@dataclass
class _SlowChecks:
    """The broker's app, except that while ``blocking`` its ticket checks wait for ``release``
    (``entered`` is set once one is waiting): a broker that is slow to answer."""

    app: ASGIApp
    blocking: bool = False
    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.blocking and scope["type"] == "http" and scope["path"].endswith("/check"):
            self.entered.set()
            await asyncio.to_thread(self.release.wait, 60)
        await self.app(scope, receive, send)


@dataclass
class _Broker:
    url: str
    issuer: OIDCIssuer
    slow: _SlowChecks

    def job(self) -> str:
        token = self.issuer.mint(self.issuer.github_claims(AUDIENCE))
        r = httpx.post(f"{self.url}/v1/exchange", json={"token": token, "grants": []}, timeout=30)
        assert r.status_code == 200, r.text
        return str(r.json()["job_token"])

    def ticket(self, job: str) -> str:
        r = httpx.post(
            f"{self.url}/v1/gateway-tickets",
            json={"gateway": "appdb"},
            headers={"Authorization": f"Bearer {job}"},
            timeout=30,
        )
        assert r.status_code == 201, r.text
        return str(r.json()["ticket"])

    def checker(self, recheck: float = 60.0) -> BrokerTicket:
        return BrokerTicket("central", "appdb", self.url, GATEWAY_TOKEN, 20, recheck)

    def revoke(self, job: str) -> None:
        headers = {"Authorization": f"Bearer {job}"}
        r = httpx.post(f"{self.url}/v1/revoke", headers=headers, timeout=30)
        assert r.json() == {"revoked": 1}


@pytest.fixture
def broker(issuer: OIDCIssuer, tmp_path: Path) -> Iterator[_Broker]:  # noqa: F811
    text = broker_yaml(issuer.url, f"sqlite:///{tmp_path / 'b.db'}", tickets=True)
    config = parse_broker_config(text + central_gateways_yaml(GATEWAY_TOKEN))
    store = StateStore(config.state)
    service = Broker(config, store=store, key=SigningKey.generate())
    slow = _SlowChecks(create_app(service))
    with BrokerServer(cast(Starlette, slow)) as server:
        yield _Broker(server.url, issuer, slow)
    service.close()
    store.close()


def _connect(gw: RunningGateway, ticket: str) -> psycopg.Connection[Any]:
    return psycopg.connect(gw.dsn(password=ticket), autocommit=True, connect_timeout=30)


def test_a_ticket_revoked_while_its_statement_is_held_refuses_it(
    make_gateway: MakeGateway, upstream: Upstream, broker: _Broker
) -> None:
    """The job ends (revoke at the broker) while its DROP waits for an approver who then says
    yes: the DROP must not run, though the gateway accepted the ticket a moment before."""
    job = broker.job()
    ticket = broker.ticket(job)

    async def approve(op: Any) -> bool:
        async with httpx.AsyncClient() as client:
            headers = {"Authorization": f"Bearer {job}"}
            r = await client.post(f"{broker.url}/v1/revoke", headers=headers, timeout=30)
        assert r.json() == {"revoked": 1}
        return True

    gw = make_gateway(
        rules=[{"id": "hold-drop", "sql": {"kinds": ["drop"]}, "action": "require_approval"}],
        approve=approve,
        ticket_check=broker.checker(),
    )
    with upstream.superuser() as su:
        su.execute("CREATE TABLE IF NOT EXISTS kept_after_revoke (id int)")
    with _connect(gw, ticket) as conn:
        with pytest.raises(psycopg.OperationalError, match="revoked") as raised:
            conn.execute("DROP TABLE kept_after_revoke")
        assert TICKET_RULE in str(raised.value)
    with upstream.superuser() as su:
        assert su.execute("SELECT to_regclass('kept_after_revoke')").fetchone() == (
            "kept_after_revoke",
        )
    assert len(gw.approvals) == 1
    denied = [g for g in gw.of_type("guardrail.decision") if g["rule_id"] == TICKET_RULE]
    assert [g["action"] for g in denied] == ["deny"]
    assert [r["error"]["sqlstate"] for r in gw.of_type("db.result") if "error" in r] == ["28000"]


def test_a_slow_broker_check_does_not_stall_other_clients(
    make_gateway: MakeGateway, broker: _Broker
) -> None:
    """Client B is connected; client A logs in while the broker sits on A's ticket check. B's
    query completes before A's check is answered (it would wait behind it if the check blocked
    the gateway's loop), and A gets in once the broker answers."""
    job = broker.job()
    first, second = broker.ticket(job), broker.ticket(job)
    gw = make_gateway(ticket_check=broker.checker())
    order: list[str] = []
    with _connect(gw, first) as b, ThreadPoolExecutor(1) as pool:
        broker.slow.blocking = True

        def connect_a() -> int:
            try:
                with _connect(gw, second) as a:
                    row = a.execute("SELECT 2").fetchone()
                    order.append("A")
                    return int(row[0]) if row else 0
            except psycopg.Error:
                order.append("A refused")
                raise

        a_done = pool.submit(connect_a)
        try:
            assert broker.slow.entered.wait(30), "A's ticket check never reached the broker"
            assert b.execute("SELECT 1").fetchone() == (1,)
            order.append("B")
        finally:
            broker.slow.release.set()
        assert a_done.result(timeout=60) == 2
    assert order == ["B", "A"]


def test_revoking_the_job_ends_its_open_connections(
    make_gateway: MakeGateway, broker: _Broker
) -> None:
    """An open connection outlives any login check: the gateway asks the broker again every
    ``recheck`` seconds, so a revoked job's connection ends (and nothing more runs on it)."""
    job = broker.job()
    gw = make_gateway(ticket_check=broker.checker(recheck=0.05))
    with _connect(gw, broker.ticket(job)) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        broker.revoke(job)
        deadline = time.monotonic() + 60  # a bound for a hang, not a speed figure
        ended = []
        while not ended and time.monotonic() < deadline:
            ended = [g for g in gw.of_type("guardrail.decision") if g["rule_id"] == TICKET_RULE]
            time.sleep(0.02)
        assert [g["reason"] for g in ended] == [
            "the gateway ticket was revoked or expired: connection ended"
        ]
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 2")
    assert not [q for q in gw.of_type("db.query") if q["sql"] == "SELECT 2"]
