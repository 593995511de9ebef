"""Messages an agent shapes to slip a tool call past the relay: each is judged or refused,
never passed to the server unjudged (and every refusal is recorded)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from airlock.gateway.mcp.relay import DENIED, Ask, McpRelay, Record, ToClient, ToServer
from airlock.mask import Masker, MaskSettings
from airlock.policy.agent_gateways import McpGatewayConfig

RULES = [
    {"id": "no-rm", "tool": "rm", "action": "deny"},
    {"id": "ask-merge", "tool": "merge", "action": "require_approval"},
]


def _relay() -> McpRelay:
    config = McpGatewayConfig.model_validate(
        {"name": "t", "kind": "mcp", "command": ["x"], "tool_rules": RULES}
    )
    return McpRelay(config, Masker(MaskSettings()), clock=iter(range(100)).__next__)


def _rm(**extra: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "rm"}, **extra}


def _raw(message: Any) -> bytes:
    return json.dumps(message).encode() + b"\n"


def _refused(actions: list[Any]) -> dict[str, Any]:
    """Nothing went to the server; the agent got an error; the refusal was recorded."""
    assert not [a for a in actions if isinstance(a, ToServer | Ask)]
    [answer] = [json.loads(a.line) for a in actions if isinstance(a, ToClient)]
    assert answer["error"]["code"] in (-32600, DENIED)
    [record] = [a.data for a in actions if isinstance(a, Record) and a.type == "mcp.request"]
    assert "error" in record
    return dict(answer)


EVASIONS = {
    "notification (no id)": _raw(_rm()),
    "id null": _raw(_rm(id=None)),
    "id true": _raw(_rm(id=True)),
    "id an object": _raw(_rm(id={"a": 1})),
    "batch": _raw([_rm(id=1)]),
    "batch of a notification": _raw([_rm()]),
    "method in other case": _raw({**_rm(id=1), "method": "Tools/Call"}),
    "method with a space": _raw({**_rm(id=1), "method": "tools/call "}),
    "method with a zero-width space": _raw({**_rm(id=1), "method": "tools/\u200bcall"}),
    "method in full-width letters": _raw({**_rm(id=1), "method": "\uff54ools/call"}),
    "method with a trailing slash": _raw({**_rm(id=1), "method": "tools/call/"}),
    "method not a string": _raw({**_rm(id=1), "method": ["tools/call"]}),
    "key given twice (method)": b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
    b'"params":{"name":"rm"},"method":"tools/list"}\n',
    "key given twice (tool name)": b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
    b'"params":{"name":"rm","name":"ls"}}\n',
    "key given twice (id)": b'{"jsonrpc":"2.0","id":1,"id":2,"method":"tools/call",'
    b'"params":{"name":"rm"}}\n',
    "request and answer at once": _raw({**_rm(id=1), "result": {}}),
}


@pytest.mark.parametrize("line", EVASIONS.values(), ids=EVASIONS.keys())
def test_a_shaped_message_is_refused_and_recorded(line: bytes) -> None:
    _refused(_relay().from_client(line))


def test_a_notification_of_a_request_method_is_refused_whatever_the_tool() -> None:
    relay = _relay()
    message = {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "ls"}}
    answer = _refused(relay.from_client(_raw(message)))
    assert answer["id"] is None and "id" in answer["error"]["message"]


def test_real_notifications_still_pass() -> None:
    relay = _relay()
    for method in ("notifications/initialized", "notifications/cancelled"):
        line = _raw({"jsonrpc": "2.0", "method": method, "params": {}})
        assert relay.from_client(line) == [ToServer(line)]


def test_an_id_in_flight_cannot_be_used_again() -> None:
    """Two calls under one id would make the log pin one call's answer on the other."""
    relay = _relay()
    first = _raw({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "ls"}})
    assert any(isinstance(a, ToServer) for a in relay.from_client(first))
    again = _raw({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "cat"}})
    assert "already" in _refused(relay.from_client(again))["error"]["message"]
    held = _raw({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "merge"}})
    [ask] = [a for a in relay.from_client(held) if isinstance(a, Ask)]
    _refused(relay.from_client(held))  # held for approval counts as in flight
    relay.decided(ask, False)
    relay.from_server(_raw({"jsonrpc": "2.0", "id": 4, "result": {"content": []}}))
    assert any(isinstance(a, ToServer) for a in relay.from_client(again))  # answered: free
