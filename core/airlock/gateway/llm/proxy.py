"""The model gateway's ASGI application: the provider's API, with the key held here.

Per request to the model endpoint (``/v1/messages``, ``/v1/chat/completions``):

1. the session ticket is checked (sent by the SDK as its API key); missing or wrong → 401;
2. the body is parsed; the model must be allowed and the session budget not used up → else 403
   in the provider's error shape, and ``guardrail.decision`` recorded;
3. ``llm.request`` is recorded (fail closed: unrecordable → 503, nothing sent upstream): the
   model, the messages added since the last request of this conversation, tools by hash;
4. the request goes upstream with the held key; a streamed answer passes through event by
   event, as it arrives, until the model opens a tool call: if tool rules apply, that event and
   everything after it are held until the stream ends and every call is judged (deny, or an
   approval refused → the agent gets an error event instead of the held part); a whole
   (non-streamed) answer is held entirely;
5. ``llm.response`` records the assembled answer (text, tool calls, stop reason, usage) masked,
   and the usage is charged to the budget.

Other paths (``/v1/models``, ``count_tokens`` …) are forwarded with the key and recorded briefly.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from airlock.events import EventType
from airlock.gateway.approvals import Approvals, Approve, tool_operation
from airlock.gateway.llm.asgi import (
    Receive,
    Refusal,
    Scope,
    Send,
    Upstream,
    bearer,
    headers_of,
    plain_path,
    read_body,
    read_capped,
    respond,
    start,
)
from airlock.gateway.llm.conversation import Conversation
from airlock.gateway.llm.guard import BUDGET_RULE, MODEL_RULE, Budget, model_allowed
from airlock.gateway.llm.providers import (
    Assembler,
    ModelRequest,
    ModelResponse,
    Provider,
    RequestError,
    assembler_for,
    error_body,
    read_request,
    stream_error,
    tool_name,
)
from airlock.gateway.llm.sse import SseError, SseParser
from airlock.gateway.tickets import TicketCheck, check_ticket
from airlock.mask import Masker
from airlock.policy.agent_gateways import LlmGatewayConfig, decide_tool
from airlock.policy.guardrails import Decision, strictest

__all__ = ["LlmProxy"]

Record = Callable[[str, Mapping[str, Any]], object]
_PASS_HEADERS = ("content-type", "accept", "anthropic-version", "anthropic-beta", "user-agent")
_MODEL_PATHS = {"anthropic": "/v1/messages", "openai": "/v1/chat/completions"}
_CUT = "…[cut by airlock]"


@dataclass
class _Call:
    """One exchange with the model, as it moves through the gateway."""

    id: str
    path: str
    started: float = field(default_factory=time.perf_counter)
    request: ModelRequest | None = None
    held: list[bytes] = field(default_factory=list)
    holding: bool = False
    outcome: str = "forwarded"


class LlmProxy:
    """ASGI app for one ``kind: llm`` gateway (see the module doc)."""

    def __init__(
        self,
        config: LlmGatewayConfig,
        *,
        key: str,
        masker: Masker,
        record: Record,
        approve: Approve | None,
        ticket: TicketCheck,
        client: httpx.AsyncClient,
    ) -> None:
        self.config = config
        self.provider: Provider = "anthropic" if config.provider == "anthropic" else "openai"
        self._key = key
        self._key_bytes = key.encode()
        self._masker = masker
        self._record = record
        self._approvals = Approvals(approve)
        self._ticket = ticket
        self._client = client
        self._ids = itertools.count(1)
        self.conversation = Conversation()
        self.budget = Budget(config.budget)
        self._judges_tools = bool(config.tool_rules) or config.tools_default != "allow"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        call = _Call(str(next(self._ids)), str(scope["path"]))
        try:
            await self._authenticate(scope)
            if not plain_path(call.path):
                raise Refusal(400, "invalid_request_error", "the path has '.', '..' or '\\'")
            body = await read_body(receive)
            if scope["method"] == "POST" and call.path == _MODEL_PATHS[self.provider]:
                await self._model_call(call, scope, body, send)
            else:
                await self._other(call, scope, body, send)
        except Refusal as refusal:
            self._emit_safe(EventType.LLM_RESPONSE, self._refusal_data(call, refusal))
            body = error_body(self.provider, refusal.kind, refusal.message)
            await respond(send, refusal.status, body, quiet=True)
        except Exception as exc:  # a bug: answer, record, never echo the message
            what = f"internal error in the gateway ({type(exc).__name__})"
            self._emit_safe(EventType.LLM_RESPONSE, {"id": call.id, "error": what})
            await respond(send, 500, error_body(self.provider, "api_error", what), quiet=True)

    # ------------------------------------------------------------------------ checks

    async def _authenticate(self, scope: Scope) -> None:
        headers = headers_of(scope)
        presented = headers.get("x-api-key") or bearer(headers.get("authorization", ""))
        if presented and await check_ticket(self._ticket, presented):
            return
        outcome = "missing" if not presented else "wrong"
        self._emit(EventType.LLM_REQUEST, {"gateway": self.config.name, "auth": outcome})
        raise Refusal(
            401,
            "authentication_error",
            f"{outcome} gateway ticket: use the session ticket Airlock exported as the API key",
        )

    def _judge_request(self, call: _Call, request: ModelRequest) -> None:
        if not model_allowed(request.model, self.config.allowed_models):
            self._decision(call, Decision("deny", MODEL_RULE), model=request.model)
            allowed = ", ".join(self.config.allowed_models)
            raise Refusal(
                403, "permission_error", f"model {request.model!r} is not allowed ({allowed})"
            )
        reason = self.budget.take_request()
        if reason is not None:
            self._decision(call, Decision("deny", BUDGET_RULE), used=self.budget.used())
            raise Refusal(403, "permission_error", reason)

    # ------------------------------------------------------------------------ model calls

    async def _model_call(self, call: _Call, scope: Scope, body: bytes, send: Send) -> None:
        try:
            request = read_request(self.provider, body)
        except RequestError as exc:
            raise Refusal(400, "invalid_request_error", str(exc)) from exc
        call.request = request
        self._judge_request(call, request)
        self._record_request(call, request)
        assembler = assembler_for(self.provider)
        async with self._upstream(scope, call.path, body) as upstream:
            streamed = "text/event-stream" in upstream.headers.get("content-type", "")
            if streamed and upstream.status_code == 200:
                await start(send, 200, upstream.headers)
                last = await self._stream(call, upstream, assembler, send)
            else:
                last = await self._whole(call, upstream, assembler)
        response = assembler.response
        self.budget.charge(response.input_tokens, response.output_tokens)
        self._record_response(call, upstream.status_code, response)  # before the agent's last byte
        if streamed and upstream.status_code == 200:
            await self._end(send, last)
        else:
            await respond(send, upstream.status_code, last, upstream.headers)

    async def _stream(
        self, call: _Call, upstream: httpx.Response, assembler: Assembler, send: Send
    ) -> bytes:
        """Pass events through (or hold them); return the bytes that end the stream."""
        parser = SseParser()
        try:
            async for chunk in upstream.aiter_bytes():
                if not await self._pass_events(call, parser.feed(chunk), assembler, send):
                    message = "the model API sent a malformed event (recorded by Airlock)"
                    return stream_error(self.provider, "api_error", message)
            if not await self._pass_events(call, parser.close(), assembler, send):
                message = "the model API sent a malformed event (recorded by Airlock)"
                return stream_error(self.provider, "api_error", message)
        except (SseError, httpx.HTTPError) as exc:
            assembler.response.errors.append(f"upstream stream broke: {type(exc).__name__}")
            call.outcome = "upstream_error"
            return stream_error(self.provider, "api_error", "the model API stream broke")
        refusal = await self._judge_tools(call, assembler.response)
        if refusal is None:
            return b"".join(call.held)
        return stream_error(self.provider, "permission_error", refusal)

    async def _pass_events(
        self, call: _Call, events: Sequence[Any], assembler: Assembler, send: Send
    ) -> bool:
        """Forward (or hold) the events one upstream read completed: one write for all of them,
        sent at once. False when one is malformed (it and those after it are not forwarded)."""
        out: list[bytes] = []
        ok = True
        for event in events:
            errors = len(assembler.response.errors)
            opened = assembler.feed(event)
            if len(assembler.response.errors) > errors and any(
                "malformed" in e for e in assembler.response.errors[errors:]
            ):
                call.outcome = "upstream_malformed"
                ok = False
                break
            call.holding |= opened and self._judges_tools
            raw = self._scrub(event.raw)
            (call.held if call.holding else out).append(raw)
        if out:
            await send({"type": "http.response.body", "body": b"".join(out), "more_body": True})
        return ok

    async def _whole(self, call: _Call, upstream: httpx.Response, assembler: Assembler) -> bytes:
        body = await read_capped(upstream)
        assembler.whole(body)
        if upstream.status_code != 200:
            call.outcome = f"upstream_{upstream.status_code}"
            return self._scrub(body)
        refusal = await self._judge_tools(call, assembler.response)
        if refusal is not None:
            raise Refusal(403, "permission_error", refusal)
        return self._scrub(body)

    async def _judge_tools(self, call: _Call, response: ModelResponse) -> str | None:
        """None when every tool call may reach the agent; else why not."""
        if not self._judges_tools or not response.tool_calls:
            return None
        judged = []
        for tool in response.tool_calls:
            decision = decide_tool(
                tool.name, tool.arguments, self.config.tool_rules, self.config.tools_default, "llm"
            )
            self._decision(call, decision, tool=tool.name, tool_use_id=tool.id)
            judged.append((tool, decision))
        worst = strictest(d for _, d in judged)
        if worst is not None and worst.action == "deny":
            call.outcome = "denied"
            return f"tool call refused by Airlock rule {worst.rule_id}"
        for tool, decision in judged:
            if decision.action == "require_approval" and not await self._ask(tool, decision):
                call.outcome = "approval_denied"
                return f"tool call {tool.name} was not approved (rule {decision.rule_id})"
        call.outcome = "approved" if worst and worst.action == "require_approval" else call.outcome
        return None

    def cancel_holds(self) -> int:
        """The session is ending: tool calls held for approval are refused (and recorded)."""
        return self._approvals.cancel_all()

    async def _ask(self, tool: Any, decision: Decision) -> bool:
        op = tool_operation(
            self._masker,
            tool.name,
            tool.arguments,
            rule_id=decision.rule_id,
            gateway=self.config.name,
            session_id=self._ticket.session_id,
        )
        return (await self._approvals.ask(op)).approved

    # ------------------------------------------------------------------------ other paths

    async def _other(self, call: _Call, scope: Scope, body: bytes, send: Send) -> None:
        self._emit(
            EventType.LLM_REQUEST,
            {
                "gateway": self.config.name,
                "id": call.id,
                "method": scope["method"],
                "path": call.path,
            },
        )
        async with self._upstream(scope, call.path, body) as upstream:
            data = await read_capped(upstream)
        self._emit_safe(
            EventType.LLM_RESPONSE,
            {"gateway": self.config.name, "id": call.id, "status": upstream.status_code},
        )
        await respond(send, upstream.status_code, self._scrub(data), upstream.headers)

    def _upstream(self, scope: Scope, path: str, body: bytes) -> Any:
        headers = {k: v for k, v in headers_of(scope).items() if k in _PASS_HEADERS}
        if self.provider == "anthropic":
            headers["x-api-key"] = self._key
        else:
            headers["authorization"] = f"Bearer {self._key}"
        # "/v1" is dropped as a whole segment only: the rest must stay a path ("/v1@host/…"
        # after an upstream URL without a path would make "host" the server called).
        whole = path == "/v1" or path.startswith("/v1/")
        suffix = path[3:] if self.provider == "openai" and whole else path
        query = bytes(scope.get("query_string", b"")).decode("latin-1")
        url = self.config.upstream_url + suffix + (f"?{query}" if query else "")
        request = self._client.build_request(scope["method"], url, headers=headers, content=body)
        return Upstream(self._client, request)

    # ------------------------------------------------------------------------ recording

    def _record_request(self, call: _Call, request: ModelRequest) -> None:
        delta = self.conversation.delta(request.system, request.messages)
        tools, definitions = self.conversation.tools(
            request.tools, lambda t: tool_name(self.provider, t)
        )
        data: dict[str, Any] = {
            "gateway": self.config.name,
            "id": call.id,
            "provider": self.config.provider,
            "model": request.model,
            "stream": request.stream,
            "prefix_len": delta.prefix_len,
            "prefix_sha256": delta.prefix_hash,
            "messages": self._masked(delta.new),
            "tools": tools,
        }
        if request.system is not None and delta.prefix_len == 0:
            data["system"] = self._masked(request.system)
        if definitions:
            data["tool_definitions"] = self._masked(definitions)
        try:
            self._emit(EventType.LLM_REQUEST, data)
        except Exception as exc:
            raise Refusal(503, "api_error", "Airlock could not record the request") from exc

    def _record_response(self, call: _Call, status: int, response: ModelResponse) -> None:
        self._emit_safe(
            EventType.LLM_RESPONSE,
            {
                "gateway": self.config.name,
                "id": call.id,
                "status": status,
                "model": response.model,
                "text": self._masked(response.joined_text()),
                "tool_calls": [
                    {"id": t.id, "name": t.name, "arguments": self._masked(t.arguments)}
                    for t in response.tool_calls
                ],
                "stop_reason": response.stop_reason,
                "usage": {
                    "input_tokens": response.input_tokens,
                    "output_tokens": response.output_tokens,
                },
                "errors": [self._masker.mask_text(e) for e in response.errors],
                "outcome": call.outcome,
                "duration_ms": round((time.perf_counter() - call.started) * 1000, 3),
            },
        )

    def _refusal_data(self, call: _Call, refusal: Refusal) -> dict[str, Any]:
        return {
            "gateway": self.config.name,
            "id": call.id,
            "status": refusal.status,
            "outcome": "refused",
            "error": refusal.message,
        }

    def _decision(self, call: _Call, decision: Decision, **extra: Any) -> None:
        self._emit(
            EventType.GUARDRAIL,
            {
                "gateway": self.config.name,
                "kind": "llm",
                "id": call.id,
                "rule_id": decision.rule_id,
                "action": decision.action,
                **extra,
            },
        )

    def _masked(self, value: Any) -> Any:
        limit = self.config.record_text_limit
        if isinstance(value, str):
            text = value if len(value) <= limit else value[:limit] + _CUT
            return self._masker.mask_text(text)
        if isinstance(value, list):
            return [self._masked(v) for v in value]
        if isinstance(value, dict):
            return {str(k): self._masked(v) for k, v in value.items()}
        return value

    def _scrub(self, data: bytes) -> bytes:
        """The held key never reaches the agent, even if the upstream echoes it."""
        if self._key_bytes and self._key_bytes in data:
            return data.replace(self._key_bytes, b"[airlock:held-key]")
        return data

    def _emit(self, etype: EventType, data: Mapping[str, Any]) -> None:
        self._record(etype.value, data)

    def _emit_safe(self, etype: EventType, data: Mapping[str, Any]) -> None:
        with contextlib.suppress(Exception):  # the answer is decided; nothing left to refuse
            self._emit(etype, data)

    async def _end(self, send: Send, body: bytes) -> None:
        await send({"type": "http.response.body", "body": body, "more_body": False})
