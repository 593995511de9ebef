"""The MCP gateway's streamable-HTTP front (what `airlock run` serves): ticket, ids, answers."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.gateway.http.conftest import Recorder

from airlock.gateway.mcp.http import ThreadedMcpGateway, start_in_thread
from airlock.gateway.tickets import Ticket
from airlock.mask import Masker, MaskSettings
from airlock.policy.agent_gateways import McpGatewayConfig

pytestmark = pytest.mark.service

RAW = Path(__file__).with_name("raw_server.py")


@pytest.fixture
def gateway() -> Iterator[tuple[ThreadedMcpGateway, Ticket, Recorder]]:
    ticket, recorder = Ticket.issue("s1", "tools"), Recorder()
    config = McpGatewayConfig(name="tools", kind="mcp", command=(sys.executable, str(RAW)))
    running = start_in_thread(
        config,
        masker=Masker(MaskSettings()),
        record=recorder,
        approve=None,
        ticket=ticket,
        environ={"PATH": "/usr/bin:/bin"},
    )
    yield running, ticket, recorder
    running.close()


def _call(request_id: Any, name: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
            "params": {"name": name, "arguments": {}}}  # fmt: skip


def test_the_ticket_is_required(gateway: tuple[ThreadedMcpGateway, Ticket, Recorder]) -> None:
    running, ticket, recorder = gateway
    for headers in ({}, {"Authorization": "Bearer not-the-ticket"}):
        answer = httpx.post(running.url, json=_call(1, "fine"), headers=headers)
        assert answer.status_code == 401
    assert recorder.of("mcp.request") == []  # nothing reached the relay
    good = httpx.post(running.url, json=_call(1, "fine"),
                      headers={"Authorization": f"Bearer {ticket.value}"})  # fmt: skip
    assert good.status_code == 200 and good.json()["result"]["content"][0]["text"] == "ok fine"


def test_clients_with_the_same_ids_get_their_own_answers(
    gateway: tuple[ThreadedMcpGateway, Ticket, Recorder],
) -> None:
    running, ticket, _ = gateway
    auth = {"Authorization": f"Bearer {ticket.value}"}

    def one(name: str) -> dict[str, Any]:
        return dict(httpx.post(running.url, json=_call(1, name), headers=auth).json())

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(one, [f"t{i}" for i in range(12)]))
    assert [a["id"] for a in answers] == [1] * 12
    assert [a["result"]["content"][0]["text"] for a in answers] == [f"ok t{i}" for i in range(12)]


def test_bad_bodies_get_json_rpc_errors(
    gateway: tuple[ThreadedMcpGateway, Ticket, Recorder],
) -> None:
    running, ticket, _ = gateway
    auth = {"Authorization": f"Bearer {ticket.value}"}
    answer = httpx.post(running.url, content=b"{nope", headers=auth)
    assert answer.status_code == 400 and answer.json()["error"]["code"] == -32700
    notification = {"jsonrpc": "2.0", "method": "notifications/x"}
    assert (
        httpx.post(running.url, content=json.dumps(notification), headers=auth).status_code == 202
    )
    assert httpx.get(running.url, headers=auth).status_code == 405
