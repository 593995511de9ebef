"""Fixtures for the provider tests: a real PostgreSQL cluster and a real moto (STS) server."""

from __future__ import annotations

import os

import pytest
from tests.providers.pg_app import AppDatabase, create_app_database
from tests.support.moto_server import MotoServer, moto_server  # noqa: F401 (fixture)
from tests.support.postgres import PostgresCluster, postgres_cluster  # noqa: F401 (fixture)


@pytest.fixture(autouse=True)
def _clean_ci_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Behave the same on a laptop and inside CI."""
    for key in list(os.environ):
        if key.startswith(("GITHUB_", "ACTIONS_", "CI_", "AWS_PROFILE")):
            monkeypatch.delenv(key)


@pytest.fixture(scope="session")
def app_db(postgres_cluster: PostgresCluster) -> AppDatabase:  # noqa: F811
    """The ``appdb`` database (see tests/providers/pg_app.py)."""
    return create_app_database(postgres_cluster)
