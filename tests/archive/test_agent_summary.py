"""The summary's agent lines and the one-line descriptions of llm.* / mcp.* events."""

from __future__ import annotations

from typing import Any

from airlock.archive.agent_summary import agent_totals
from airlock.audit.describe import Describer

EVENTS: list[dict[str, Any]] = [
    {"type": "llm.request", "data": {"model": "claude-x", "messages": [{"role": "user"}]}},
    {
        "type": "llm.response",
        "data": {
            "outcome": "forwarded",
            "text": "ok",
            "tool_calls": [{"name": "Bash"}, {"name": "Read"}],
            "usage": {"input_tokens": 100, "output_tokens": 20},
        },
    },
    {"type": "llm.request", "data": {"model": "claude-x", "messages": []}},
    {"type": "llm.response", "data": {"usage": {"input_tokens": 150, "output_tokens": 5}}},
    {"type": "mcp.request", "data": {"method": "tools/call", "tool": "add", "action": "allow"}},
    {"type": "mcp.request", "data": {"method": "tools/call", "tool": "delete", "action": "deny"}},
    {"type": "guardrail.decision", "data": {"rule_id": "no-delete", "action": "deny"}},
    {"type": "approval.decided", "data": {"approved": True}},
    {"type": "approval.expired", "data": {}},
]


def test_totals_count_models_tokens_tools_denials_and_approvals() -> None:
    lines = agent_totals(EVENTS).lines()
    assert lines == [
        "Models: claude-x (2)",
        "Tokens: 250 in, 25 out",
        "Tool calls asked by the model: Bash 1, Read 1",
        "MCP tool calls: add 1, delete 1",
        "Denied: no-delete 1",
        "Approvals: approved 1, expired 1",
    ]


def test_a_session_without_agent_events_has_no_agent_lines() -> None:
    assert agent_totals([{"type": "process.exec", "data": {"argv": ["ls"]}}]).empty()


def test_describe_names_the_model_the_tools_and_the_outcome() -> None:
    describe = Describer().describe
    assert describe(EVENTS[0]) == "claude-x: 1 new message(s)"
    assert describe(EVENTS[1]) == "forwarded: ok → Bash, Read (100/20 tok)"
    assert describe(EVENTS[5]) == "tools/call delete [deny]"
    response = {"type": "mcp.response", "data": {"tool": "add", "duration_ms": 1.5}}
    assert describe(response) == "add: ok in 1.5 ms"


def test_ocsf_maps_model_and_mcp_events_to_api_activity() -> None:
    from airlock.archive.export_ocsf import to_ocsf

    events = [{"seq": i, "ts": "2026-01-01T00:00:00Z", **e} for i, e in enumerate(EVENTS[:6])]
    records = list(to_ocsf(events, "s1"))
    assert {
        r["class_uid"] for r in records if r["unmapped"]["airlock"]["type"][:4] in ("llm.", "mcp.")
    } == {6003}
