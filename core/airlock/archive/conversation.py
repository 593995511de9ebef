"""The model transcript of a session for the report: requests, answers, tool calls, and the
events each tool call caused (processes, queries, requests, MCP calls) by sequence number.

A tool call the model asked for (in an ``llm.response``) is linked to the events after that
response and before the next ``llm.request`` of the same gateway: that is when the agent acts
on the answer. An MCP call (``mcp.request``) is its own entry, with its answer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["conversation"]

_CAUSED = ("process.exec", "db.query", "http.request", "mcp.request")
_TEXT_CAP = 4000


def _text(value: Any) -> str:
    """The readable text of a message's content (a string or a list of blocks)."""
    if isinstance(value, str):
        return value[:_TEXT_CAP]
    if isinstance(value, list):
        parts = []
        for block in value:
            if isinstance(block, dict):
                kind = block.get("type")
                if kind == "text":
                    parts.append(str(block.get("text", "")))
                elif kind == "tool_use":
                    parts.append(f"[tool call {block.get('name')}]")
                elif kind == "tool_result":
                    parts.append("[tool result] " + _text(block.get("content")))
            elif isinstance(block, str):
                parts.append(block)
        return "\n".join(parts)[:_TEXT_CAP]
    return ""


def conversation(events: Iterable[dict[str, Any]], limit: int = 5000) -> list[dict[str, Any]]:
    """Entries ``{seq, kind, …}`` in log order, at most ``limit``."""
    out: list[dict[str, Any]] = []
    open_calls: dict[str, list[dict[str, Any]]] = {}  # gateway → tool calls awaiting effects
    for event in events:
        etype, seq = str(event.get("type")), event.get("seq")
        data = event.get("data") if isinstance(event.get("data"), dict) else {}
        assert isinstance(data, dict)
        if etype in _CAUSED:
            for calls in open_calls.values():
                for call in calls:
                    if len(call["caused"]) < 50:
                        call["caused"].append({"seq": seq, "type": etype})
        if len(out) >= limit:
            continue
        gateway = str(data.get("gateway", ""))
        if etype == "llm.request" and "messages" in data:
            open_calls.pop(gateway, None)
            messages = [
                {"role": str(m.get("role", "")), "text": _text(m.get("content"))}
                for m in data.get("messages") or []
                if isinstance(m, dict)
            ]
            out.append(
                {"seq": seq, "kind": "request", "model": data.get("model"), "messages": messages}
            )
        elif etype == "llm.response" and "outcome" in data:
            calls = [
                {"name": str(c.get("name")), "arguments": c.get("arguments"), "caused": []}
                for c in data.get("tool_calls") or []
                if isinstance(c, dict)
            ]
            open_calls[gateway] = calls
            out.append(
                {
                    "seq": seq,
                    "kind": "response",
                    "text": _text(data.get("text")),
                    "outcome": data.get("outcome"),
                    "tool_calls": calls,
                }
            )
        elif etype == "mcp.request" and data.get("method") == "tools/call":
            out.append(
                {
                    "seq": seq,
                    "kind": "mcp",
                    "tool": data.get("tool"),
                    "arguments": data.get("arguments"),
                    "action": data.get("action"),
                }
            )
    return out
