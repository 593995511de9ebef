"""Session 6 attack on the HTTP gateway's holds: a held request dies with its client.

The attacker's move: the agent sends a request that is held for approval and, in the same write,
a second request pipelined behind it, then closes the connection. The h1 server stops reading a
connection while a pipelined request waits its turn, and a socket that is not read does not
report the client's FIN: the hold would outlive its client, and an approver answering later
(a human, who cannot tell) would let the DELETE reach the upstream for nobody.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from tests.attacks.test_attack_h1 import OK
from tests.gateway.http.conftest import Recorder
from tests.support.raw_http import RawUpstream

from airlock.gate import Operation
from airlock.gateway.http import ThreadedHttpGateway, start_in_thread
from airlock.gateway.tickets import Ticket
from airlock.mask import Masker, MaskSettings
from airlock.policy.gateways import HttpGatewayConfig
from airlock.policy.guardrails import GuardrailRule

pytestmark = pytest.mark.service

HOLD = {"id": "hold-delete", "http": {"methods": ["DELETE"]}, "action": "require_approval"}


def _wait_for(check: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def upstream() -> Iterator[RawUpstream]:
    server = RawUpstream(lambda n, request: OK)
    yield server
    server.close()


def test_a_held_request_dies_with_its_client_when_another_is_pipelined_behind_it(
    upstream: RawUpstream,
) -> None:
    release = threading.Event()
    asked: list[Operation] = []

    async def approve(op: Operation) -> bool:
        asked.append(op)
        while not release.is_set():
            await asyncio.sleep(0.01)
        return True  # the approver says yes, later

    ticket = Ticket.issue("session-1", "api")
    recorder = Recorder()
    config = HttpGatewayConfig.model_validate(
        {
            "name": "api",
            "kind": "http",
            "upstream": upstream.url,
            "credential": {"env": {"bearer": "API_TOKEN"}},
        }
    )
    gw: ThreadedHttpGateway = start_in_thread(
        config,
        masker=Masker(MaskSettings()),
        record=recorder,
        approve=approve,
        ticket=ticket,
        guardrails=[GuardrailRule.model_validate(HOLD)],
        environ={"API_TOKEN": "upstream-held-token-" + "p" * 24},
    )
    auth = f"Authorization: Bearer {ticket.value}\r\n".encode()
    try:
        host, port = gw.url.removeprefix("http://").split(":")
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.sendall(
            b"DELETE /items/1 HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n"
            b"GET /after HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n"
        )
        _wait_for(lambda: bool(asked), "the approval request")
        sock.close()  # the client is gone: its hold must end with it
        try:
            _wait_for(
                lambda: any(e["status"] == 499 for e in recorder.of("http.response")),
                "the held request's end",
            )
        finally:
            release.set()
        _wait_for(lambda: len(recorder.of("http.response")) >= 1, "the outcome")
    finally:
        release.set()
        gw.close()
    assert [m["method"] for m in upstream.requests] in ([], [b"GET"])
