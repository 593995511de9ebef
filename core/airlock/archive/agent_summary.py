"""The agent lines of a session's summary: models and tokens, tool calls by name, denials and
approvals, from the model-API and MCP gateways' events (and the approval events)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["AgentTotals", "agent_totals", "describe_agent_event"]


@dataclass
class AgentTotals:
    """What the model and MCP gateways saw in one session."""

    models: Counter[str] = field(default_factory=Counter)  # requests per model
    input_tokens: int = 0
    output_tokens: int = 0
    model_tool_calls: Counter[str] = field(default_factory=Counter)  # asked for by the model
    mcp_tool_calls: Counter[str] = field(default_factory=Counter)  # sent to MCP servers
    denied: Counter[str] = field(default_factory=Counter)  # by rule id
    approvals: Counter[str] = field(default_factory=Counter)  # approved / denied / expired

    def empty(self) -> bool:
        return not (self.models or self.mcp_tool_calls or self.denied or self.approvals)

    def lines(self) -> list[str]:
        """Plain-text lines (the caller escapes them for Markdown)."""
        out = []
        if self.models:
            used = ", ".join(f"{m} ({n})" for m, n in sorted(self.models.items()))
            out.append(f"Models: {used}")
            out.append(f"Tokens: {self.input_tokens} in, {self.output_tokens} out")
        if self.model_tool_calls:
            out.append("Tool calls asked by the model: " + _counts(self.model_tool_calls))
        if self.mcp_tool_calls:
            out.append("MCP tool calls: " + _counts(self.mcp_tool_calls))
        if self.denied:
            out.append("Denied: " + _counts(self.denied))
        if self.approvals:
            out.append("Approvals: " + _counts(self.approvals))
        return out


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(counter.items()))


def agent_totals(events: Iterable[dict[str, Any]]) -> AgentTotals:
    """Add up ``events`` (dicts with ``type`` and ``data``)."""
    totals = AgentTotals()
    for event in events:
        data = event.get("data") if isinstance(event.get("data"), dict) else {}
        assert isinstance(data, dict)
        _add(totals, str(event.get("type")), data)
    return totals


def _add(totals: AgentTotals, etype: str, data: dict[str, Any]) -> None:
    if etype == "llm.request" and data.get("model"):
        totals.models[str(data["model"])] += 1
    elif etype == "llm.response":
        usage: dict[str, Any] = data["usage"] if isinstance(data.get("usage"), dict) else {}
        totals.input_tokens += _int(usage.get("input_tokens"))
        totals.output_tokens += _int(usage.get("output_tokens"))
        for call in data.get("tool_calls") or []:
            if isinstance(call, dict):
                totals.model_tool_calls[str(call.get("name"))] += 1
    elif etype == "mcp.request" and data.get("method") == "tools/call":
        totals.mcp_tool_calls[str(data.get("tool"))] += 1
    elif etype == "guardrail.decision" and data.get("action") == "deny":
        totals.denied[str(data.get("rule_id"))] += 1
    elif etype == "approval.decided":
        totals.approvals["approved" if data.get("approved") else "denied"] += 1
    elif etype == "approval.expired":
        totals.approvals["expired"] += 1


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def describe_agent_event(etype: str, data: dict[str, Any]) -> str | None:
    """One line for an llm.* / mcp.* event (the shared describer's); None for other types."""
    if not etype.startswith(("llm.", "mcp.")):
        return None
    from airlock.audit.describe import Describer

    return Describer().view({"type": etype, "data": data}).summary
