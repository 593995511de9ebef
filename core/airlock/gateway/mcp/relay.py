"""The MCP gateway's relay, sans-I/O: JSON-RPC lines in, actions out.

The transports (stdio, streamable HTTP) only move lines; this class decides. From the agent:

    tools/call      judged by the tool rules: allow → forwarded; deny → a JSON-RPC error to the
                    agent (code -32001), nothing sent to the server; require_approval → an
                    :class:`Ask` the transport answers with :meth:`McpRelay.decided`
    resources/read  recorded and forwarded
    anything else   forwarded (tools/list's answer is filtered: tools a rule denies outright
                    are not offered)
    refused         (recorded, a JSON-RPC error to the agent, nothing sent) whatever could be
                    read two ways: a notification (no id) of a method that is not
                    ``notifications/…``, an id that is null, not a string or an integer, or
                    already in flight, a batch (array), a key given twice, a method name that
                    is not plain ASCII ``word/word`` or that only differs from a judged one in
                    case or punctuation (see :func:`refusal`)

From the server: the answer to each pending request is recorded (result masked and cut,
error, duration) and forwarded; the held credentials are scrubbed from what the agent gets.
Bad input never stops the relay: a line that is not JSON-RPC from the agent gets a JSON-RPC
error; one from the server is recorded and, when it names a pending request, that request gets
an error; a server that exits fails every pending request with an error.
"""

from __future__ import annotations

import json
import re
import time
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mcp.types import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    PARSE_ERROR,
    JSONRPCError,
    JSONRPCNotification,
    JSONRPCRequest,
    jsonrpc_message_adapter,
)
from pydantic import ValidationError

from airlock.events import EventType
from airlock.mask import Masker
from airlock.policy.agent_gateways import McpGatewayConfig, ToolRule, decide_tool
from airlock.policy.guardrails import Decision

__all__ = [
    "DENIED",
    "Ask",
    "DuplicateKey",
    "McpRelay",
    "Record",
    "ToClient",
    "ToServer",
    "parse_message",
    "refusal",
]

DENIED = -32001  # server-defined range: refused by Airlock's policy
_CUT = "…[cut by airlock]"
_METHOD_RE = re.compile(r"[A-Za-z0-9_-]+(?:/[A-Za-z0-9_-]+)*")
_JUDGED = frozenset({"tools/call", "resources/read"})


class DuplicateKey(ValueError):
    """A JSON object names one key twice (parsers disagree on which one wins)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise DuplicateKey("a key is given twice in one object")
    return dict(pairs)


def parse_message(line: bytes) -> Any:
    """The agent's message as JSON; :class:`DuplicateKey` (a ``ValueError``) on a key given
    twice, ``ValueError`` when it is not JSON."""
    return json.loads(line, object_pairs_hook=_unique_keys)


def _folded(method: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKC", method).casefold() if c.isalnum())


def refusal(message: Any) -> str | None:
    """Why the relay refuses this (parsed) agent message outright, or None. Every server
    must read what is judged the way the relay does: so nothing that could be read two ways
    is passed on."""
    if isinstance(message, list):
        return "batches (JSON arrays) are not accepted: send one message at a time"
    if not isinstance(message, dict) or "method" not in message:
        return None
    method = message["method"]
    if not isinstance(method, str) or not _METHOD_RE.fullmatch(method):
        return "the method name must be plain ASCII words joined by '/'"
    if method not in _JUDGED and _folded(method) in {_folded(m) for m in _JUDGED}:
        return f"the method name must be written exactly as MCP has it, not {method!r}"
    if "result" in message or "error" in message:
        return "a message is a request or an answer, not both"
    if "id" not in message:
        if method.startswith("notifications/"):
            return None
        return f"{method} is a request: it needs an id (a notification cannot carry it)"
    request_id = message["id"]
    if isinstance(request_id, bool) or not isinstance(request_id, int | str):
        return "a request's id must be a string or an integer (not null)"
    return None


_ID_RE = re.compile(rb'"id"\s*:\s*("(?:[^"\\]|\\.){0,200}"|-?\d{1,20})')


@dataclass(frozen=True)
class ToClient:
    """Send this line to the agent."""

    line: bytes


@dataclass(frozen=True)
class ToServer:
    """Send this line to the MCP server."""

    line: bytes


@dataclass(frozen=True)
class Record:
    """Append this event to the session log."""

    type: str
    data: dict[str, Any]


@dataclass(frozen=True)
class Ask:
    """Hold this tools/call until a human decides; then call :meth:`McpRelay.decided`."""

    request_id: Any
    tool: str
    arguments: Any
    decision: Decision
    line: bytes = field(repr=False)


Action = ToClient | ToServer | Record | Ask


@dataclass
class _Pending:
    method: str
    started: float
    tool: str = ""


def error_line(request_id: Any, code: int, message: str) -> bytes:
    """A JSON-RPC error response, one line."""
    body = {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


class McpRelay:
    """One agent ↔ one MCP server. Not thread-safe: one transport drives it."""

    def __init__(
        self,
        config: McpGatewayConfig,
        masker: Masker,
        held: Sequence[str] = (),
        clock: Any = time.perf_counter,
    ) -> None:
        self.config = config
        self._masker = masker
        self._held = [h.encode() for h in held if h]
        for value in held:
            if value:
                masker.add_secret(value, "gateway-credential")  # never in the log either
        self._clock = clock
        self._pending: dict[Any, _Pending] = {}
        self._asking: set[Any] = set()  # ids of tools/calls held for approval
        self.server_alive = True
        self.counts = {"calls": 0, "denied": 0, "errors": 0}

    # ------------------------------------------------------------------ from the agent

    def from_client(self, line: bytes) -> list[Action]:
        """Judge one line from the agent."""
        if not line.strip():
            return []
        problem, request_id = self._problem(line)
        if problem is not None:
            return self._refused(request_id, line, problem)
        try:
            message = jsonrpc_message_adapter.validate_json(line, by_name=False)
        except ValidationError as exc:
            return self._bad_client_line(line, exc)
        if not isinstance(message, JSONRPCRequest):
            return [ToServer(line)] if self.server_alive else []
        if not self.server_alive:
            return [ToClient(error_line(message.id, INTERNAL_ERROR, "the MCP server has exited"))]
        params = message.params if isinstance(message.params, dict) else {}
        if message.method == "tools/call":
            return self._tool_call(message.id, params, line)
        self._pending[message.id] = _Pending(message.method, self._clock())
        if message.method == "resources/read":
            uri = self._masker.mask_text(str(params.get("uri", "")))
            data = self._base(message.id, "resources/read") | {"uri": uri}
            return [Record(EventType.MCP_REQUEST.value, data), ToServer(line)]
        return [ToServer(line)]

    def _problem(self, line: bytes) -> tuple[str | None, Any]:
        """(why the line is refused or None, the id to answer it with)."""
        try:
            message = parse_message(line)
        except DuplicateKey as exc:
            return str(exc), None
        except ValueError:
            return None, None  # not JSON: answered as such
        request_id = message.get("id") if isinstance(message, dict) else None
        if isinstance(request_id, bool) or not isinstance(request_id, int | str):
            request_id = None
        problem = refusal(message)
        in_flight = request_id in self._pending or request_id in self._asking
        if problem is None and isinstance(message, dict) and "method" in message and in_flight:
            problem = f"the id {request_id!r} is already used by a request in flight"
        return problem, request_id

    def _refused(self, request_id: Any, line: bytes, problem: str) -> list[Action]:
        self.counts["denied"] += 1
        error = self._masker.mask_text(f"refused: {problem}")
        data = {"gateway": self.config.name, "error": error, "size": len(line)}
        return [
            Record(EventType.MCP_REQUEST.value, data),
            ToClient(error_line(request_id, INVALID_REQUEST, f"Airlock: {error}")),
        ]

    def _bad_client_line(self, line: bytes, exc: ValidationError) -> list[Action]:
        is_json = _json_or_none(line) is not None
        code, what = (
            (INVALID_REQUEST, "not a JSON-RPC message")
            if is_json
            else (
                PARSE_ERROR,
                "not JSON",
            )
        )
        found = _ID_RE.search(line[:4096])
        request_id = json.loads(found.group(1)) if found and is_json else None
        data = {"gateway": self.config.name, "error": f"agent sent {what}", "size": len(line)}
        return [
            Record(EventType.MCP_REQUEST.value, data),
            ToClient(error_line(request_id, code, f"Airlock: {what}")),
        ]

    def _tool_call(self, request_id: Any, params: dict[str, Any], line: bytes) -> list[Action]:
        name = str(params.get("name", ""))
        arguments = params.get("arguments") if isinstance(params.get("arguments"), dict) else {}
        decision = decide_tool(
            name, arguments, self.config.tool_rules, self.config.tools_default, "mcp"
        )
        self.counts["calls"] += 1
        data = self._base(request_id, "tools/call") | {
            "tool": name,
            "arguments": self._masked(arguments, 8192),
            "rule_id": decision.rule_id,
            "action": decision.action,
        }
        actions: list[Action] = [Record(EventType.MCP_REQUEST.value, data)]
        if decision.action != "allow" or self.config.tool_rules:
            actions.append(Record(EventType.GUARDRAIL.value, self._decision(name, decision)))
        if decision.action == "deny":
            self.counts["denied"] += 1
            message = f"Airlock: tool {name} is denied by rule {decision.rule_id}"
            return [*actions, ToClient(error_line(request_id, DENIED, message))]
        if decision.action == "require_approval":
            self._asking.add(request_id)
            return [*actions, Ask(request_id, name, arguments, decision, line)]
        self._pending[request_id] = _Pending("tools/call", self._clock(), name)
        return [*actions, ToServer(line)]

    def decided(self, ask: Ask, approved: bool) -> list[Action]:
        """The human's answer to an :class:`Ask`."""
        self._asking.discard(ask.request_id)
        if not approved:
            self.counts["denied"] += 1
            message = f"Airlock: tool {ask.tool} was not approved (rule {ask.decision.rule_id})"
            data = self._base(ask.request_id, "tools/call") | {
                "tool": ask.tool,
                "error": "not approved",
            }
            return [
                Record(EventType.MCP_RESPONSE.value, data),
                ToClient(error_line(ask.request_id, DENIED, message)),
            ]
        if not self.server_alive:
            return [ToClient(error_line(ask.request_id, INTERNAL_ERROR, "the MCP server exited"))]
        self._pending[ask.request_id] = _Pending("tools/call", self._clock(), ask.tool)
        return [ToServer(ask.line)]

    # ------------------------------------------------------------------ from the server

    def from_server(self, line: bytes) -> list[Action]:
        """Record and forward one line from the server."""
        if not line.strip():
            return []
        try:
            message = jsonrpc_message_adapter.validate_json(line, by_name=False)
        except ValidationError:
            return self._bad_server_line(line)
        if isinstance(message, JSONRPCRequest | JSONRPCNotification):
            return [ToClient(self._scrub(line))]
        pending = self._pending.pop(message.id, None)
        if pending is None:
            return [ToClient(self._scrub(line))]
        if isinstance(message, JSONRPCError):
            self.counts["errors"] += 1
            error = self._masker.mask_text(f"{message.error.code}: {message.error.message}")
            return [self._response(message.id, pending, error=error), ToClient(self._scrub(line))]
        result = message.result if isinstance(message.result, dict) else {}
        if pending.method == "tools/list":
            line = self._filtered_tools(line, result)
        if pending.method in ("tools/call", "resources/read"):
            return [self._response(message.id, pending, result=result), ToClient(self._scrub(line))]
        return [ToClient(self._scrub(line))]

    def _bad_server_line(self, line: bytes) -> list[Action]:
        self.counts["errors"] += 1
        found = _ID_RE.search(line[:4096])
        request_id = json.loads(found.group(1)) if found else None
        pending = self._pending.pop(request_id, None) if found else None
        what = "a line that is not JSON-RPC" if _json_or_none(line) is not None else "non-JSON"
        data = {"gateway": self.config.name, "error": f"server sent {what}", "size": len(line)}
        actions: list[Action] = [Record(EventType.MCP_RESPONSE.value, data)]
        if pending is not None:
            message = f"Airlock: the MCP server sent an invalid answer ({what}); it was recorded"
            actions.append(ToClient(error_line(request_id, INTERNAL_ERROR, message)))
        return actions

    def oversized(self, prefix: bytes, size: int) -> list[Action]:
        """The server sent a line over the transport's cap (only its first bytes were kept)."""
        self.counts["errors"] += 1
        found = _ID_RE.search(prefix)
        request_id = json.loads(found.group(1)) if found else None
        pending = self._pending.pop(request_id, None) if found else None
        data = {"gateway": self.config.name, "error": "answer too large", "size": size}
        if pending is not None:
            data |= {"id": request_id, "method": pending.method, "tool": pending.tool}
        actions: list[Action] = [Record(EventType.MCP_RESPONSE.value, data)]
        if pending is not None:
            message = f"Airlock: the MCP server's answer ({size} bytes) is over the gateway's limit"
            actions.append(ToClient(error_line(request_id, INTERNAL_ERROR, message)))
        return actions

    def server_exited(self, status: int | None) -> list[Action]:
        """The server is gone: every pending request gets an error."""
        self.server_alive = False
        message = f"Airlock: the MCP server exited (status {status}); the call was not completed"
        actions: list[Action] = [
            Record(
                EventType.MCP_RESPONSE.value,
                {"gateway": self.config.name, "error": "server exited", "status": status},
            )
        ]
        for request_id in list(self._pending):
            actions.append(ToClient(error_line(request_id, INTERNAL_ERROR, message)))
        self._pending.clear()
        return actions

    # ------------------------------------------------------------------ helpers

    def _filtered_tools(self, line: bytes, result: dict[str, Any]) -> bytes:
        tools = result.get("tools")
        if not isinstance(tools, list):
            return line
        offered = [t for t in tools if not _denied_outright(t, self.config)]
        if len(offered) == len(tools):
            return line
        data = json.loads(line)
        data["result"]["tools"] = offered
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"

    def _response(
        self, request_id: Any, pending: _Pending, *, result: Any = None, error: str | None = None
    ) -> Record:
        data = self._base(request_id, pending.method) | {
            "duration_ms": round((self._clock() - pending.started) * 1000, 3)
        }
        if pending.tool:
            data["tool"] = pending.tool
        if error is not None:
            data["error"] = error
        else:
            data["result"] = self._masked(result, self.config.record_result_limit)
            data["is_error"] = bool(isinstance(result, dict) and result.get("isError"))
        return Record(EventType.MCP_RESPONSE.value, data)

    def _base(self, request_id: Any, method: str) -> dict[str, Any]:
        return {"gateway": self.config.name, "id": request_id, "method": method}

    def _decision(self, tool: str, decision: Decision) -> dict[str, Any]:
        return {
            "gateway": self.config.name,
            "kind": "mcp",
            "rule_id": decision.rule_id,
            "action": decision.action,
            "tool": tool,
        }

    def _masked(self, value: Any, limit: int) -> Any:
        if isinstance(value, str):
            return self._masker.mask_text(value if len(value) <= limit else value[:limit] + _CUT)
        if isinstance(value, list):
            return [self._masked(v, limit) for v in value]
        if isinstance(value, Mapping):
            return {str(k): self._masked(v, limit) for k, v in value.items()}
        return value

    def _scrub(self, line: bytes) -> bytes:
        for held in self._held:
            if held in line:
                line = line.replace(held, b"[airlock:held-credential]")
        return line


def _denied_outright(tool: Any, config: McpGatewayConfig) -> bool:
    """A tool every call of which is denied is not offered: a deny rule without argument
    matchers names it, or the default denies and no rule names it at all."""
    name = str(tool.get("name", "")) if isinstance(tool, dict) else ""
    rules: Sequence[ToolRule] = config.tool_rules
    if any(r.action == "deny" and not r.arguments and r.matches(name, {}) for r in rules):
        return True
    named = any(r.model_copy(update={"arguments": {}}).matches(name, {}) for r in rules)
    return config.tools_default == "deny" and not named


def _json_or_none(line: bytes) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return None
