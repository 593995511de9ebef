"""Single-use jti and the rate window in the shared SQL store, under concurrency and across
replicas (two brokers, two stores, one database): of many submits of one token exactly one wins,
and a window of N admits exactly N."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from tests.broker.conftest import AUDIENCE, broker_yaml
from tests.support.oidc_issuer import OIDCIssuer
from tests.support.postgres import PostgresCluster

from airlock.audit import SigningKey
from airlock.broker.service import Broker, RateLimited
from airlock.broker.state import RATES, StateStore
from airlock.errors import PolicyDenied
from airlock.oidc import OIDCError
from airlock.policy.broker_config import parse_broker_config

Replicas = Callable[..., list[Broker]]
SUBMITS = 24


def _token(issuer: OIDCIssuer, **claims: Any) -> str:
    return issuer.mint(issuer.github_claims(AUDIENCE, **claims))


def _race(brokers: list[Broker], tokens: list[str]) -> list[str]:
    """Submit every token at once, round-robin over the replicas; the outcome of each."""
    barrier = threading.Barrier(len(tokens))
    outcomes: list[str] = []
    lock = threading.Lock()

    def submit(n: int) -> None:
        barrier.wait()
        try:
            brokers[n % len(brokers)].exchange(tokens[n], ["deploy"])
            result = "issued"
        except OIDCError as exc:
            result = exc.reason
        except RateLimited:
            result = "rate-limited"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(len(tokens))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


@pytest.fixture
def replicas(issuer: OIDCIssuer) -> Iterator[Callable[..., list[Broker]]]:
    """Two brokers, each with its own store on one database; one fixed clock, so that the rate
    window cannot roll over mid-test; the rate windows start empty."""
    opened: list[tuple[Broker, StateStore]] = []
    now = time.time()

    def build(state: str, *, rate: int = 1000) -> list[Broker]:
        config = parse_broker_config(broker_yaml(issuer.url, state, rate=rate))
        brokers = []
        for _ in range(2):
            store = StateStore(config.state)
            broker = Broker(config, store=store, key=SigningKey.generate(), clock=lambda: now)
            opened.append((broker, store))
            brokers.append(broker)
        with brokers[0].store.engine.begin() as conn:
            conn.execute(sa.delete(RATES))
        for broker in brokers:  # warm each key cache, so that the race is on the store
            broker.exchange(_token(issuer), [])
        return brokers

    yield build
    for broker, store in opened:
        broker.close()
        store.close()


@pytest.fixture
def pg_url(postgres_cluster: PostgresCluster) -> str:
    """A fresh database of the session's cluster, so that no other test's rows are in it."""
    c = postgres_cluster
    name = f"broker_state_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(c.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"postgresql://{c.superuser}:{c.password}@{c.host}:{c.port}/{name}"


def _assert_one_token_one_lease(issuer: OIDCIssuer, brokers: list[Broker]) -> None:
    before = len(brokers[0].store.leases())
    outcomes = _race(brokers, [_token(issuer)] * SUBMITS)
    assert outcomes.count("issued") == 1
    assert outcomes.count("replayed") == SUBMITS - 1
    assert len(brokers[0].store.leases()) == before + 1


def test_concurrent_replay_across_replicas_sqlite(
    issuer: OIDCIssuer, replicas: Replicas, sqlite_url: str
) -> None:
    _assert_one_token_one_lease(issuer, replicas(sqlite_url))


@pytest.mark.service
def test_concurrent_replay_across_replicas_postgresql(
    issuer: OIDCIssuer, replicas: Replicas, pg_url: str
) -> None:
    _assert_one_token_one_lease(issuer, replicas(pg_url))


def _assert_window_admits_exactly(issuer: OIDCIssuer, brokers: list[Broker], rate: int) -> None:
    # The warm-up exchanges asked for no grant but were counted: the window has room for the rest.
    room = rate - len(brokers)
    outcomes = _race(brokers, [_token(issuer) for _ in range(SUBMITS)])
    assert outcomes.count("issued") == room
    assert outcomes.count("rate-limited") == SUBMITS - room


def test_rate_window_admits_exactly_its_limit_across_replicas_sqlite(
    issuer: OIDCIssuer, replicas: Replicas, sqlite_url: str
) -> None:
    _assert_window_admits_exactly(issuer, replicas(sqlite_url, rate=7), 7)


@pytest.mark.service
def test_rate_window_admits_exactly_its_limit_across_replicas_postgresql(
    issuer: OIDCIssuer, replicas: Replicas, pg_url: str
) -> None:
    _assert_window_admits_exactly(issuer, replicas(pg_url, rate=7), 7)


def test_a_replayed_token_is_not_counted_and_a_denied_one_is_used_up(
    issuer: OIDCIssuer, replicas: Replicas, sqlite_url: str
) -> None:
    broker = replicas(sqlite_url, rate=4)[0]  # 2 of 4 taken by the warm-up
    token = _token(issuer)
    broker.exchange(token, ["deploy"])  # 3 of 4 in the window
    for _ in range(3):
        with pytest.raises(OIDCError, match="already used"):
            broker.exchange(token, ["deploy"])
    denied = _token(issuer, ref="refs/heads/feature")
    with pytest.raises(PolicyDenied) as first:
        broker.exchange(denied, ["deploy"])
    assert not isinstance(first.value, RateLimited)
    with pytest.raises(OIDCError, match="already used"):  # refused for policy, still used up
        broker.exchange(denied, ["deploy"])
    broker.exchange(_token(issuer), ["deploy"])  # 4 of 4: neither replays nor denials counted
    with pytest.raises(RateLimited):
        broker.exchange(_token(issuer), ["deploy"])
