"""Broker fixtures: a real OIDC issuer over HTTP and a broker config that trusts it."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.oidc_issuer import OIDCIssuer

from airlock.audit import SigningKey
from airlock.broker.service import Broker
from airlock.broker.state import StateStore
from airlock.policy.broker_config import parse_broker_config

AUDIENCE = "https://airlock.test"
STATIC_VALUE = "static-deploy-key-value-8f2a9c"


@pytest.fixture(scope="session")
def issuer() -> Iterator[OIDCIssuer]:
    with OIDCIssuer() as server:
        yield server


def broker_yaml(issuer_url: str, state: str, *, rate: int = 1000, tickets: bool = False) -> str:
    """A broker trusting ``issuer_url``; with ``tickets`` the rule also grants a ticket for the
    central gateway ``appdb``, not for ``proddb`` (the caller adds both to
    ``central_gateways:``, see :func:`central_gateways_yaml`)."""
    ticket_grant = (
        "  appdb-ticket: {provider: central-gateway, gateway: appdb}\n"
        "  proddb-ticket: {provider: central-gateway, gateway: proddb}\n"
        if tickets
        else ""
    )
    ticket_name = ", appdb-ticket" if tickets else ""
    return f"""
version: 1
issuers: [{{name: github, url: "{issuer_url}", audience: "{AUDIENCE}", platform: github}}]
providers:
  static:
    secrets:
      DEPLOY_KEY: "{STATIC_VALUE}"
      BROKEN: "file:/nonexistent/airlock-test-secret"
grants:
  deploy: {{provider: static, secrets: [DEPLOY_KEY], ttl: 15m}}
  broken: {{provider: static, secrets: [BROKEN]}}
{ticket_grant}rules:
  - id: api-main
    issuer: github
    claims: {{repository_id: "123456", repository_owner_id: "7890", ref: refs/heads/main}}
    grants: [deploy, broken{ticket_name}]
state: "{state}"
limits: {{per_repository: {{rate: {rate}, per: 60}}}}
"""


def central_gateways_yaml(gateway_token: str) -> str:
    """``central_gateways:`` with ``appdb`` and ``proddb``, both using ``gateway_token``."""
    digest = hashlib.sha256(gateway_token.encode()).hexdigest()
    return (
        "central_gateways:\n"
        f"  appdb: {{token_sha256: {digest}}}\n"
        f"  proddb: {{token_sha256: {digest}}}\n"
    )


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'broker.db'}"


@pytest.fixture
def make_broker(issuer: OIDCIssuer, tmp_path: Path) -> Iterator[object]:
    stores: list[StateStore] = []
    brokers: list[Broker] = []

    def build(state: str, *, rate: int = 1000) -> Broker:
        config = parse_broker_config(broker_yaml(issuer.url, state, rate=rate))
        store = StateStore(config.state)
        stores.append(store)
        broker = Broker(config, store=store, key=SigningKey.generate())
        brokers.append(broker)
        return broker

    yield build
    for broker in brokers:
        broker.close()
    for store in stores:
        store.close()
