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
    assert httpx.get(running.url, headers=auth).status_code == 406  # not text/event-stream


def _events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if line.startswith("data: "):
            yield json.loads(line[len("data: ") :])


def test_messages_the_server_starts_reach_a_listening_agent(
    gateway: tuple[ThreadedMcpGateway, Ticket, Recorder],
) -> None:
    """Streamable HTTP: notifications and the server's own requests come on the GET stream;
    the agent's answer to such a request is POSTed and reaches the server."""
    running, ticket, _ = gateway
    auth = {"Authorization": f"Bearer {ticket.value}"}
    listen = {**auth, "Accept": "text/event-stream"}
    with httpx.Client(timeout=10) as client, client.stream("GET", running.url, headers=listen) as s:
        assert s.status_code == 200 and s.headers["content-type"] == "text/event-stream"
        events = _events(s.iter_lines())
        assert client.post(running.url, json=_call(2, "notify"), headers=auth).status_code == 200
        assert next(events)["params"]["data"] == "working"
        with ThreadPoolExecutor(1) as pool:
            call = pool.submit(client.post, running.url, json=_call(3, "ask"), headers=auth)
            request = next(events)
            assert request["method"] == "sampling/createMessage" and request["id"] == "srv-1"
            result = {"role": "assistant", "model": "m",
                      "content": {"type": "text", "text": "fine"}}  # fmt: skip
            answer = {"jsonrpc": "2.0", "id": "srv-1", "result": result}
            assert client.post(running.url, json=answer, headers=auth).status_code == 202
            assert call.result().json()["result"]["content"][0]["text"] == "ok asked: fine"
        running.close()  # an open stream ends with the gateway
        assert list(events) == []


def test_a_streamable_http_upstream_behind_the_gateway(tmp_path: Path) -> None:
    import socket
    import subprocess
    import time

    import anyio
    import httpx2
    from mcp.client.client import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared.exceptions import MCPError

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("mcp_server.py")), "--http", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    ticket, recorder = Ticket.issue("s1", "remote"), Recorder()
    config = McpGatewayConfig.model_validate(
        {"name": "remote", "kind": "mcp", "upstream": f"http://127.0.0.1:{port}/mcp",
         "credential": {"bearer_env": "REMOTE_TOKEN"},
         "tool_rules": [{"id": "no-delete", "tool": "delete_file", "action": "deny"}]}
    )  # fmt: skip
    try:
        for _ in range(200):  # until the server listens
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        running = start_in_thread(
            config, masker=Masker(MaskSettings()), record=recorder, approve=None,
            ticket=ticket, environ={"REMOTE_TOKEN": "remote-held-token-" + "r" * 20},
        )  # fmt: skip

        async def main() -> dict[str, Any]:
            http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {ticket.value}"})
            async with http, Client(streamable_http_client(running.url, http_client=http)) as c:
                names = sorted(t.name for t in (await c.list_tools()).tools)
                added = (await c.call_tool("add", {"a": 20, "b": 22})).structured_content
                with pytest.raises(MCPError, match="no-delete"):
                    await c.call_tool("delete_file", {"path": "/x"})
                return {"names": names, "added": added}

        try:
            out = anyio.run(main)
        finally:
            running.close()
    finally:
        server.terminate()
        server.wait(10)
    assert "delete_file" not in out["names"] and "add" in out["names"]
    assert out["added"] == {"result": 42}
    calls = [(d["tool"], d["action"]) for d in recorder.of("mcp.request") if d.get("tool")]
    assert calls == [("add", "allow"), ("delete_file", "deny")]
    assert "remote-held-token" not in recorder.text()


def test_a_held_tool_call_dies_with_its_client(tmp_path: Path) -> None:
    """In front of an HTTP upstream, an agent that leaves while its call waits for approval
    cancels the approval request; a late approval sends nothing."""
    import socket
    import time

    from airlock.audit import SigningKey
    from airlock.gate import approver
    from airlock.gate.file import FileBackend, decide, pending

    recorder, ticket = Recorder(), Ticket.issue("s1", "remote")
    backend = FileBackend(tmp_path, key=SigningKey.generate(), record=recorder)
    backend.poll_interval = 0.02
    config = McpGatewayConfig.model_validate(
        {"name": "remote", "kind": "mcp", "upstream": "http://127.0.0.1:9/mcp",  # never reached
         "tool_rules": [{"id": "hold-sql", "tool": "run_sql", "action": "require_approval"}]}
    )  # fmt: skip
    running = start_in_thread(
        config, masker=Masker(MaskSettings()), record=recorder, approve=approver(backend, 60),
        ticket=ticket, environ={},
    )  # fmt: skip
    try:
        body = json.dumps(_call(1, "run_sql")).encode()
        head = (
            f"POST /mcp HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ticket.value}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        with socket.create_connection(running.address) as client:
            client.sendall(head.encode() + body)
            deadline = time.monotonic() + 10
            while not list(pending(tmp_path)) and time.monotonic() < deadline:
                time.sleep(0.02)
            request = next(iter(pending(tmp_path)))
        while not recorder.of("approval.cancelled") and time.monotonic() < deadline:
            time.sleep(0.02)
        decide(tmp_path, str(request["request_id"]), approved=True, by="late")
        time.sleep(0.2)
    finally:
        running.close()
    cancelled = recorder.of("approval.cancelled")
    assert len(cancelled) == 1 and "client disconnected" in cancelled[0]["reason"]
    assert recorder.of("approval.decided") == []
    assert [e.get("error") for e in recorder.of("mcp.response")] == ["not approved"]


SHAPED = {
    "notification": {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "rm"}},
    "id null": {"jsonrpc": "2.0", "id": None, "method": "tools/call", "params": {"name": "rm"}},
    "batch": [{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "rm"}}],
    "other case": {"jsonrpc": "2.0", "id": 9, "method": "TOOLS/call", "params": {"name": "rm"}},
}


@pytest.mark.parametrize("message", SHAPED.values(), ids=SHAPED.keys())
def test_shaped_messages_are_refused_not_passed_on(
    gateway: tuple[ThreadedMcpGateway, Ticket, Recorder], message: Any
) -> None:
    """The server (raw_server.py) answers every tools/call it gets: nothing comes back ok."""
    running, ticket, recorder = gateway
    auth = {"Authorization": f"Bearer {ticket.value}"}
    answer = httpx.post(running.url, content=json.dumps(message), headers=auth)
    assert answer.status_code in (200, 400)
    assert (
        answer.json()["error"]["code"] == -32600 and "refused" in answer.json()["error"]["message"]
    )
    assert [e["error"][:8] for e in recorder.of("mcp.request")] == ["refused:"]
    assert recorder.of("mcp.response") == []  # the server never answered anything
