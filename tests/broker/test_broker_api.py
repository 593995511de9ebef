"""The broker under uvicorn, over real sockets: exchange, revoke, witness, limits, metrics."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from tests.broker.conftest import AUDIENCE, STATIC_VALUE
from tests.support.broker_server import BrokerServer
from tests.support.oidc_issuer import OIDCIssuer
from tests.support.postgres import PostgresCluster

from airlock.audit.checkpoints import checkpoint_message
from airlock.broker.app import create_app
from airlock.broker.service import Broker
from airlock.errors import PolicyDenied

MakeBroker = Callable[..., Broker]


def _token(issuer: OIDCIssuer, **claims: Any) -> str:
    return issuer.mint(issuer.github_claims(AUDIENCE, **claims))


def _exchange(url: str, token: str, grants: list[str]) -> httpx.Response:
    return httpx.post(f"{url}/v1/exchange", json={"token": token, "grants": grants}, timeout=30)


def test_exchange_issues_the_grant_and_the_ledger_keeps_only_hashes(
    issuer: OIDCIssuer, make_broker: MakeBroker, sqlite_url: str, tmp_path: Path
) -> None:
    broker = make_broker(sqlite_url)
    with BrokerServer(create_app(broker)) as server:
        response = _exchange(server.url, _token(issuer), ["deploy"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["rule_id"] == "api-main"
    assert [lease["values"] for lease in body["leases"]] == [{"DEPLOY_KEY": STATIC_VALUE}]
    assert response.headers["cache-control"] == "no-store"
    [row] = broker.store.leases()
    assert row.grant_name == "deploy"
    assert row.subject["repository_id"] == "123456"
    assert STATIC_VALUE.encode() not in (tmp_path / "broker.db").read_bytes()
    assert len(row.fingerprints["DEPLOY_KEY"]) == 64


def test_denial_is_coarse_for_the_caller_precise_in_the_log(
    issuer: OIDCIssuer, make_broker: MakeBroker, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    token = _token(issuer, repository_id="999999")  # a renamed or different repository
    broker = make_broker(sqlite_url)
    with (
        caplog.at_level(logging.INFO, logger="airlock.broker"),
        BrokerServer(create_app(broker)) as s,
    ):
        response = _exchange(s.url, token, ["deploy"])
    assert response.status_code == 403
    message = response.json()["message"]
    assert "123456" not in message  # the caller learns which claim, never the expected value
    assert "999999" not in message
    assert "is not '123456'" in caplog.text  # the broker log has the precise reason
    assert token not in caplog.text
    assert token not in response.text


def test_a_token_is_single_use(
    issuer: OIDCIssuer, make_broker: MakeBroker, sqlite_url: str
) -> None:
    token = _token(issuer)
    with BrokerServer(create_app(make_broker(sqlite_url))) as server:
        assert _exchange(server.url, token, ["deploy"]).status_code == 200
        again = _exchange(server.url, token, ["deploy"])
    assert again.status_code == 401
    assert again.json()["error"] == "replayed"


def test_a_failed_multi_grant_exchange_issues_nothing(
    issuer: OIDCIssuer, make_broker: MakeBroker, sqlite_url: str
) -> None:
    broker = make_broker(sqlite_url)
    with BrokerServer(create_app(broker)) as server:
        response = _exchange(server.url, _token(issuer), ["deploy", "broken"])
    assert response.status_code == 503
    assert STATIC_VALUE not in response.text
    assert broker.store.leases() == []


def test_revoke_with_the_job_token_ends_every_lease_once(
    issuer: OIDCIssuer, make_broker: MakeBroker, sqlite_url: str
) -> None:
    broker = make_broker(sqlite_url)
    with BrokerServer(create_app(broker)) as server:
        job = _exchange(server.url, _token(issuer), ["deploy"]).json()["job_token"]
        headers = {"Authorization": f"Bearer {job}"}
        first = httpx.post(f"{server.url}/v1/revoke", headers=headers)
        second = httpx.post(f"{server.url}/v1/revoke", headers=headers)
        stranger = httpx.post(f"{server.url}/v1/revoke", headers={"Authorization": "Bearer nope"})
    assert first.json() == {"revoked": 1}
    assert second.json() == {"revoked": 0}
    assert stranger.status_code == 403
    assert all(row.revoked_at is not None for row in broker.store.leases())


def test_sweeper_revokes_expired_leases(
    issuer: OIDCIssuer, make_broker: MakeBroker, sqlite_url: str
) -> None:
    broker = make_broker(sqlite_url)
    broker.exchange(_token(issuer), ["deploy"])
    assert broker.sweep() == 0  # not expired yet
    assert broker.sweep(now=broker.store.leases()[0].expires_at + 1) == 1
    assert broker.store.leases(live_only=True) == []


def test_checkpoints_are_signed_with_the_published_key(
    issuer: OIDCIssuer, make_broker: MakeBroker, sqlite_url: str
) -> None:
    head = "ab" * 32
    with BrokerServer(create_app(make_broker(sqlite_url))) as server:
        job = _exchange(server.url, _token(issuer), []).json()["job_token"]
        auth = {"Authorization": f"Bearer {job}"}
        url = f"{server.url}/v1/sessions/s-1/checkpoints"
        witnessed = httpx.post(url, json={"seq": 10, "head": head}, headers=auth)
        duplicate = httpx.post(url, json={"seq": 10, "head": head}, headers=auth)
        unauthenticated = httpx.post(url, json={"seq": 11, "head": head})
        listed = httpx.get(url).json()["checkpoints"]
        keys = httpx.get(f"{server.url}/.well-known/airlock-keys").json()["keys"]
    assert witnessed.status_code == 201, witnessed.text
    assert duplicate.status_code == 400
    assert unauthenticated.status_code == 401  # no bearer token: unauthenticated
    row = witnessed.json()
    assert listed == [row]
    public = load_pem_public_key(keys[0]["public_pem"].encode())
    public.verify(  # type: ignore[union-attr,call-arg]
        base64.b64decode(row["signature"]), checkpoint_message("s-1", 10, head, row["at"])
    )
    assert keys[0]["key_id"] == row["key_id"]


def test_bad_bodies_get_4xx(make_broker: MakeBroker, sqlite_url: str) -> None:
    with BrokerServer(create_app(make_broker(sqlite_url))) as server:
        huge = httpx.post(f"{server.url}/v1/exchange", content=b"{" + b" " * 200_000 + b"}")
        garbage = httpx.post(f"{server.url}/v1/exchange", content=b"not json")
        extra = httpx.post(
            f"{server.url}/v1/exchange", json={"token": "x", "grants": [], "admin": True}
        )
    assert huge.status_code == 413
    assert garbage.status_code == 400
    assert extra.status_code == 400


def test_rate_limit_per_repository(
    issuer: OIDCIssuer, make_broker: MakeBroker, sqlite_url: str
) -> None:
    with BrokerServer(create_app(make_broker(sqlite_url, rate=2))) as server:
        codes = [_exchange(server.url, _token(issuer), ["deploy"]).status_code for _ in range(4)]
    assert codes == [200, 200, 429, 429]


def test_many_parallel_exchanges_and_metrics(
    issuer: OIDCIssuer, make_broker: MakeBroker, sqlite_url: str
) -> None:
    broker = make_broker(sqlite_url)
    tokens = [_token(issuer) for _ in range(40)]
    with BrokerServer(create_app(broker)) as server, ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda t: _exchange(server.url, t, ["deploy"]).status_code, tokens))
        metrics = httpx.get(f"{server.url}/metrics").text
        health = httpx.get(f"{server.url}/healthz").json()
    assert codes == [200] * 40
    assert len({row.lease_id for row in broker.store.leases()}) == 40
    assert 'airlock_broker_exchanges_total{outcome="issued"} 40.0' in metrics
    assert health == {"status": "ok"}


@pytest.mark.service
def test_postgresql_state_store(
    issuer: OIDCIssuer, make_broker: MakeBroker, postgres_cluster: PostgresCluster
) -> None:
    c = postgres_cluster
    broker = make_broker(f"postgresql://{c.superuser}:{c.password}@{c.host}:{c.port}/postgres")
    token = _token(issuer)
    broker.exchange(token, ["deploy"])
    with pytest.raises(Exception, match="already used"):
        broker.exchange(token, ["deploy"])
    assert [row.grant_name for row in broker.store.leases()] == ["deploy"]


def test_a_session_id_belongs_to_the_first_job_that_checkpoints_it(
    issuer: OIDCIssuer, make_broker: MakeBroker, sqlite_url: str
) -> None:
    broker = make_broker(sqlite_url)
    first = broker.exchange(_token(issuer), []).job_token
    second = broker.exchange(_token(issuer), []).job_token
    broker.witness(first, "s-owned", 0, "ab" * 32)
    with pytest.raises(PolicyDenied, match="belongs to another job"):
        broker.witness(second, "s-owned", 1, "cd" * 32)
