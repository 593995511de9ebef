"""Fixtures for OIDC tests: a real issuer over HTTP, an "attacker" server, a verifier factory.

``oidc_issuer`` is reusable by any test (the broker's too): one server for the session, reset
for each test (new key, counters at zero, no overrides).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from tests.support.oidc_issuer import OIDCIssuer

from airlock.oidc import InMemoryReplayCache, IssuerConfig, JWKSCache, TokenVerifier

AUDIENCE = "https://airlock.broker.test"
VerifierFactory = Callable[..., TokenVerifier]


@pytest.fixture(scope="session")
def _issuer_server() -> Iterator[OIDCIssuer]:
    with OIDCIssuer() as issuer:
        yield issuer


@pytest.fixture(scope="session")
def _attacker_server() -> Iterator[OIDCIssuer]:
    with OIDCIssuer() as server:
        yield server


@pytest.fixture
def oidc_issuer(_issuer_server: OIDCIssuer) -> OIDCIssuer:
    """A running test issuer with a fresh RS256 key and zeroed request counters."""
    _issuer_server.reset()
    return _issuer_server


@pytest.fixture
def attacker(_attacker_server: OIDCIssuer) -> OIDCIssuer:
    """A second server standing for the attacker's: every request it gets is counted."""
    _attacker_server.reset()
    return _attacker_server


@pytest.fixture
def make_verifier(oidc_issuer: OIDCIssuer) -> Iterator[VerifierFactory]:
    """Build a verifier trusting ``oidc_issuer`` (overridable per call); closes its clients."""
    caches: list[JWKSCache] = []

    def build(
        *,
        issuers: list[IssuerConfig] | None = None,
        cooldown: float = 30.0,
        ttl: float = 900.0,
        max_bytes: int = 256 * 1024,
        **kwargs: Any,
    ) -> TokenVerifier:
        cache = JWKSCache(refresh_cooldown=cooldown, ttl=ttl, max_bytes=max_bytes, timeout=2.0)
        caches.append(cache)
        if issuers is None:
            issuers = [IssuerConfig(name="github", url=oidc_issuer.url, audience=AUDIENCE)]
        kwargs.setdefault("replay_cache", InMemoryReplayCache())
        return TokenVerifier(issuers, keys=cache, **kwargs)

    yield build
    for cache in caches:
        cache.close()
