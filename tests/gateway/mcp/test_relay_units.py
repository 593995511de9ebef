"""The MCP relay, sans-I/O: lines in, actions out."""

from __future__ import annotations

import json
from typing import Any

from airlock.gateway.mcp.relay import DENIED, Ask, McpRelay, Record, ToClient, ToServer
from airlock.mask import Masker, MaskSettings
from airlock.policy.agent_gateways import McpGatewayConfig

HELD = "server-held-token-" + "z" * 20


def _relay(**fields: Any) -> McpRelay:
    config = McpGatewayConfig.model_validate(
        {"name": "t", "kind": "mcp", "command": ["x"], **fields}
    )
    return McpRelay(config, Masker(MaskSettings()), [HELD], clock=iter(range(100)).__next__)


def _line(**message: Any) -> bytes:
    return json.dumps({"jsonrpc": "2.0", **message}).encode() + b"\n"


def _call(request_id: int, name: str, **arguments: Any) -> bytes:
    return _line(id=request_id, method="tools/call", params={"name": name, "arguments": arguments})


def test_denied_call_never_reaches_the_server() -> None:
    relay = _relay(tool_rules=[{"id": "no-rm", "tool": "rm", "action": "deny"}])
    actions = relay.from_client(_call(1, "rm", path="/"))
    assert not any(isinstance(a, ToServer) for a in actions)
    [answer] = [json.loads(a.line) for a in actions if isinstance(a, ToClient)]
    assert answer["id"] == 1 and answer["error"]["code"] == DENIED
    assert "no-rm" in answer["error"]["message"]


def test_approval_is_asked_for_that_call_and_its_answer_decides() -> None:
    relay = _relay(tool_rules=[{"id": "ask", "tool": "merge", "action": "require_approval"}])
    [ask] = [a for a in relay.from_client(_call(7, "merge", pr=12)) if isinstance(a, Ask)]
    assert (ask.tool, ask.arguments) == ("merge", {"pr": 12})
    assert isinstance(relay.decided(ask, True)[0], ToServer)
    refused = relay.decided(ask, False)
    assert (
        json.loads(next(a for a in refused if isinstance(a, ToClient)).line)["error"]["code"]
        == DENIED
    )


def test_tools_list_hides_only_tools_that_are_always_denied() -> None:
    relay = _relay(
        tool_rules=[
            {"id": "a", "tool": "delete_*", "action": "deny"},
            {"id": "b", "tool": "sql", "arguments": {"q": "drop"}, "action": "deny"},
        ]
    )
    relay.from_client(_line(id=1, method="tools/list", params={}))
    tools = [{"name": n, "inputSchema": {"type": "object"}} for n in ("delete_x", "sql", "add")]
    [out] = relay.from_server(_line(id=1, result={"tools": tools}))
    assert isinstance(out, ToClient)
    assert [t["name"] for t in json.loads(out.line)["result"]["tools"]] == ["sql", "add"]


def test_default_deny_offers_only_named_tools() -> None:
    relay = _relay(
        tools_default="deny", tool_rules=[{"id": "ok", "tool": "add", "action": "allow"}]
    )
    relay.from_client(_line(id=1, method="tools/list", params={}))
    tools = [{"name": "add"}, {"name": "shell"}]
    [out] = relay.from_server(_line(id=1, result={"tools": tools}))
    assert [t["name"] for t in json.loads(out.line)["result"]["tools"]] == ["add"]  # type: ignore[union-attr]


def test_results_are_recorded_masked_and_held_values_scrubbed_for_the_agent() -> None:
    relay = _relay()
    relay.from_client(_call(3, "read"))
    text = f"token ghp_{'A' * 36} and {HELD}"
    actions = relay.from_server(_line(id=3, result={"content": [{"type": "text", "text": text}]}))
    record = next(a for a in actions if isinstance(a, Record))
    assert record.type == "mcp.response" and record.data["tool"] == "read"
    assert HELD not in json.dumps(record.data) and "ghp_" + "A" * 36 not in json.dumps(record.data)
    to_agent = next(a for a in actions if isinstance(a, ToClient)).line
    assert HELD.encode() not in to_agent


def test_server_exit_fails_pending_and_later_requests() -> None:
    relay = _relay()
    relay.from_client(_call(1, "slow"))
    exited = relay.server_exited(2)
    [answer] = [json.loads(a.line) for a in exited if isinstance(a, ToClient)]
    assert answer["id"] == 1 and "status 2" in answer["error"]["message"]
    [later] = relay.from_client(_call(2, "add"))
    assert isinstance(later, ToClient) and json.loads(later.line)["id"] == 2
