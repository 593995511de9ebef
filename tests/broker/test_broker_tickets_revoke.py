"""Central-gateway tickets are grants under the trust policy, and revoke ends the job: over
real sockets against the broker under uvicorn."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from tests.broker.conftest import AUDIENCE, broker_yaml, central_gateways_yaml
from tests.support.broker_server import BrokerServer
from tests.support.oidc_issuer import OIDCIssuer

from airlock.audit import SigningKey
from airlock.broker.app import create_app
from airlock.broker.service import Broker
from airlock.broker.state import StateStore
from airlock.gateway.tickets import CACHE_SIZE, BrokerTicket, check_ticket
from airlock.policy.broker_config import parse_broker_config

GATEWAY_TOKEN = "gw-" + secrets.token_hex(12)
HEAD = "ab" * 32


@dataclass
class Api:
    url: str
    issuer: OIDCIssuer

    def exchange(self, grants: list[str]) -> httpx.Response:
        token = self.issuer.mint(self.issuer.github_claims(AUDIENCE))
        body = {"token": token, "grants": grants}
        return httpx.post(f"{self.url}/v1/exchange", json=body, timeout=30)

    def job(self) -> str:
        response = self.exchange([])
        assert response.status_code == 200, response.text
        return str(response.json()["job_token"])

    def ticket(self, job: str, gateway: str) -> httpx.Response:
        return httpx.post(
            f"{self.url}/v1/gateway-tickets",
            json={"gateway": gateway},
            headers={"Authorization": f"Bearer {job}"},
            timeout=30,
        )

    def check(self, gateway: str, ticket: str) -> httpx.Response:
        return httpx.post(
            f"{self.url}/v1/gateway-tickets/check",
            json={"gateway": gateway, "ticket": ticket},
            headers={"Authorization": f"Bearer {GATEWAY_TOKEN}"},
            timeout=30,
        )

    def revoke(self, job: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {job}"}
        return httpx.post(f"{self.url}/v1/revoke", headers=headers, timeout=30)

    def checkpoint(self, job: str, seq: int) -> httpx.Response:
        return httpx.post(
            f"{self.url}/v1/sessions/s-revoke/checkpoints",
            json={"seq": seq, "head": HEAD},
            headers={"Authorization": f"Bearer {job}"},
            timeout=30,
        )


@pytest.fixture
def api(issuer: OIDCIssuer, tmp_path: Path) -> Iterator[Api]:
    text = broker_yaml(issuer.url, f"sqlite:///{tmp_path / 'b.db'}", tickets=True)
    config = parse_broker_config(text + central_gateways_yaml(GATEWAY_TOKEN))
    store = StateStore(config.state)
    broker = Broker(config, store=store, key=SigningKey.generate())
    with BrokerServer(create_app(broker)) as server:
        yield Api(server.url, issuer)
    broker.close()
    store.close()


def test_a_ticket_needs_a_ticket_grant_in_the_rule_that_admitted_the_job(api: Api) -> None:
    job = api.job()
    denied = api.ticket(job, "proddb")  # configured, with a grant, but not in rule api-main
    assert denied.status_code == 403, denied.text
    assert denied.json()["rule_id"] == "api-main"
    allowed = api.ticket(job, "appdb")
    assert allowed.status_code == 201, allowed.text
    assert api.check("appdb", allowed.json()["ticket"]).status_code == 200
    assert api.check("proddb", allowed.json()["ticket"]).status_code == 403  # bound to appdb


def test_exchange_refuses_an_ungranted_ticket_and_issues_a_granted_one_as_a_lease(
    api: Api,
) -> None:
    assert api.exchange(["proddb-ticket"]).status_code == 403
    issued = api.exchange(["appdb-ticket"])
    assert issued.status_code == 200, issued.text
    [lease] = issued.json()["leases"]
    ticket = lease["values"]["AIRLOCK_TICKET_APPDB"]
    assert api.check("appdb", ticket).status_code == 200
    assert api.revoke(issued.json()["job_token"]).json() == {"revoked": 1}
    assert api.check("appdb", ticket).status_code == 403


def test_revoke_ends_the_job_token_and_its_tickets_at_once(api: Api) -> None:
    job = api.job()
    ticket = api.ticket(job, "appdb").json()["ticket"]
    assert api.checkpoint(job, 1).status_code == 201
    assert api.check("appdb", ticket).status_code == 200
    assert api.revoke(job).status_code == 200
    assert api.check("appdb", ticket).status_code == 403  # issued before revoke
    assert api.ticket(job, "appdb").status_code == 403  # the token gets nothing more
    assert api.checkpoint(job, 2).status_code == 403
    assert api.revoke(job).json() == {"revoked": 0}  # revoking again is a no-op


def test_an_older_state_database_gains_the_new_columns_in_place(tmp_path: Path) -> None:
    """A broker upgraded over an existing database: jobs and approvals tables get the columns
    revoke, tickets and id-bound approvals need, and old rows stay readable."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # the tables as the previous release created them
        conn.execute(
            sa.text(
                "CREATE TABLE airlock_jobs (job_digest VARCHAR(64) PRIMARY KEY, subject TEXT "
                "NOT NULL, created_at FLOAT NOT NULL, expires_at FLOAT NOT NULL)"
            )
        )
        conn.execute(
            sa.text("INSERT INTO airlock_jobs VALUES ('d' , '{\"repository_id\": \"1\"}', 0, 1e12)")
        )
    engine.dispose()
    store = StateStore(url)
    try:
        old = store.job("d")
        assert old is not None and old.ceiling == () and old.subject == {"repository_id": "1"}
        assert store.revoke_job("d", 1.0) and store.job("d") is None
        columns = {c["name"] for c in sa.inspect(store.engine).get_columns("airlock_jobs")}
        assert {"ceiling", "revoked_at", "issuer", "rule_id"} <= columns
    finally:
        store.close()


def test_the_gateway_cache_is_bounded_and_a_fresh_check_sees_a_revoke(api: Api) -> None:
    """A central gateway remembers a "yes" for RECHECK_SECONDS at most; a fresh check (before
    sending an operation held for approval) asks the broker again; old answers are dropped
    past CACHE_SIZE."""
    job = api.job()
    ticket = api.ticket(job, "appdb").json()["ticket"]
    checker = BrokerTicket("s", "appdb", api.url, GATEWAY_TOKEN)
    assert asyncio.run(check_ticket(checker, ticket))
    assert api.revoke(job).status_code == 200
    assert checker.check(ticket)  # the cached answer, at most RECHECK_SECONDS old
    assert not asyncio.run(check_ticket(checker, ticket, fresh=True))
    assert not checker.check(ticket)  # the broker's "no" replaced the cached "yes"
    for i in range(CACHE_SIZE + 5):
        checker._answer(f"k{i}", httpx.Response(200, json={"expires_at": 1e12}))
    assert len(checker._accepted) == CACHE_SIZE and "k0" not in checker._accepted
