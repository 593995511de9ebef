"""The gateway's ordering contract: a statement is recorded (``db.query``) before it is sent
upstream, so one whose event cannot be written never runs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg
import pytest
from tests.gateway.postgres.conftest import MakeGateway, Upstream

pytestmark = pytest.mark.service


def test_a_statement_whose_event_cannot_be_recorded_is_never_sent(
    make_gateway: MakeGateway, upstream: Upstream
) -> None:
    refused: list[str] = []

    def refuse(type_: str, data: Mapping[str, Any]) -> bool:
        if type_ == "db.query" and "canary" in repr(data):
            refused.append(str(data["protocol"]))
            return True
        return False

    gateway = make_gateway(refuse_record=refuse)
    gateway.psql("INSERT INTO notes (body) VALUES ('canary simple')")  # the simple protocol
    with (
        pytest.raises(psycopg.OperationalError),
        psycopg.connect(gateway.dsn(), autocommit=True) as conn,
    ):
        conn.execute("INSERT INTO notes (body) VALUES (%s)", ("canary extended",))
    assert refused == ["simple", "extended"]
    with upstream.superuser() as conn:
        rows = conn.execute("SELECT count(*) FROM notes WHERE body LIKE 'canary%'").fetchone()
    assert rows == (0,)
    # and the gateway goes on for statements it can record
    assert gateway.psql("SELECT 'recorded'", check=True).stdout.strip() == "recorded"
