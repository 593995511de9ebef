"""A local fake model server: the Anthropic Messages API and OpenAI Chat Completions, with SSE.

Replies are scripted (``FakeModels.script``: one :class:`Reply` per request, then the default).
What the server received (headers included) is kept in ``FakeModels.seen`` for the tests. Every
request it receives and every answer it sends (whole bodies and each streamed event) is checked
against the provider's published OpenAPI description; what does not follow it is collected in
``FakeModels.violations`` (the fixture fails the test on any).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from tests.gateway.llm.openapi_specs import violations as spec_violations

Scope = dict[str, Any]
UPSTREAM_KEY = "sk-ant-api03-" + "HeldModelKey0123456789" * 3


@dataclass
class Reply:
    text: str = "Hello from the fake model."
    tools: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    malformed: bool = False  # a data line that is not JSON, mid-stream
    chunks: int = 3  # text deltas
    delay: float = 0.0  # seconds between events


def _usage(
    input_tokens: int | None, output_tokens: int, *, delta: bool = False, beta: bool = False
) -> dict[str, Any]:
    """Usage with every field the published description requires (the unknown ones null)."""
    usage: dict[str, Any] = {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": None,
        "cache_read_input_tokens": None,
        "output_tokens_details": None,
        "server_tool_use": None,
    }
    if not delta:
        usage |= {"cache_creation": None, "inference_geo": None, "service_tier": None}
    if beta:  # the beta API (Claude Code uses it) adds these
        usage |= {"iterations": None} | ({} if delta else {"speed": None})
    return usage


def _text_block(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text, "citations": None}


def _tool_block(call_id: str, name: str, arguments: Any) -> dict[str, Any]:
    return {"type": "tool_use", "id": call_id, "name": name, "input": arguments,
            "caller": {"type": "direct"}}  # fmt: skip


def _message(
    model: str, content: list[Any], stop: str | None, usage: Any, beta: bool = False
) -> dict[str, Any]:
    message = {"id": "msg_01", "type": "message", "role": "assistant", "model": model,
               "content": content, "stop_reason": stop, "stop_sequence": None,
               "stop_details": None, "container": None, "usage": usage}  # fmt: skip
    return message | ({"context_management": None, "diagnostics": None} if beta else {})


@dataclass
class FakeModels:
    script: list[Reply] = field(default_factory=list)
    seen: list[dict[str, Any]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    url: str = ""

    def check(self, provider: str, schema: str, instance: Any) -> None:
        self.violations += spec_violations(provider, schema, instance)

    def next_reply(self) -> Reply:
        return self.script.pop(0) if self.script else Reply()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        data = json.loads(body) if body else {}
        self.seen.append({"path": scope["path"], "headers": headers, "body": data})
        key = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ")
        if key != UPSTREAM_KEY:
            await _json(
                send,
                401,
                {
                    "type": "error",
                    "error": {"type": "authentication_error", "message": "invalid x-api-key"},
                },
            )
            return
        reply = self.next_reply()
        beta = b"beta=true" in scope.get("query_string", b"")  # /v1/messages?beta=true
        if scope["path"] == "/v1/messages":
            self.check(
                "anthropic", "BetaCreateMessageParams" if beta else "CreateMessageParams", data
            )
            await self._anthropic(send, data, reply, beta)
        elif scope["path"] == "/v1/chat/completions":
            self.check("openai", "CreateChatCompletionRequest", data)
            await self._openai(send, data, reply)
        elif scope["path"] == "/v1/models":
            await _json(send, 200, {"data": [{"id": "claude-test", "type": "model"}]})
        else:
            await _json(send, 404, {"error": "not found"})

    async def _anthropic(
        self, send: Any, request: dict[str, Any], reply: Reply, beta: bool = False
    ) -> None:
        prefix = "Beta" if beta else ""
        model = request.get("model", "claude-test")
        stop = "tool_use" if reply.tools else "end_turn"
        if not request.get("stream"):
            content = [_text_block(reply.text)]
            content += [_tool_block(f"toolu_{i:02d}", n, a) for i, (n, a) in enumerate(reply.tools)]
            message = _message(model, content, stop, _usage(12, 7, beta=beta), beta)
            check = "anthropic", prefix + "Message"
            await _json(send, 200, message, check=lambda body: self.check(*check, body))
            return
        start = _message(model, [], None, _usage(12, 1, beta=beta), beta)
        events: list[tuple[str, Any]] = [
            ("message_start", {"type": "message_start", "message": start})
        ]
        events.append(
            (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": _text_block(""),
                },
            )
        )
        for piece in _split(reply.text, reply.chunks):
            events.append(
                (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": piece},
                    },
                )
            )
        if reply.malformed:
            events.append(("content_block_delta", "{not json"))
        events.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
        for i, (name, args) in enumerate(reply.tools, start=1):
            events.append(
                (
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": i,
                        "content_block": _tool_block(f"toolu_{i:02d}", name, {}),
                    },
                )
            )
            for piece in _split(json.dumps(args), 2):
                events.append(
                    (
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": i,
                            "delta": {"type": "input_json_delta", "partial_json": piece},
                        },
                    )
                )
            events.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
        events.append(
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {
                        "stop_reason": stop,
                        "stop_sequence": None,
                        "stop_details": None,
                        "container": None,
                    },
                    "usage": _usage(None, 7, delta=True, beta=beta),
                    **({"context_management": None} if beta else {}),
                },
            )
        )
        events.append(("message_stop", {"type": "message_stop"}))
        await _sse(
            send,
            [(n, d if isinstance(d, str) else json.dumps(d)) for n, d in events],
            reply.delay,
            check=lambda event: self.check("anthropic", prefix + "MessageStreamEvent", event),
        )

    async def _openai(self, send: Any, request: dict[str, Any], reply: Reply) -> None:
        model = request.get("model", "gpt-test")
        stop = "tool_calls" if reply.tools else "stop"
        usage = {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}
        base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model}
        if not request.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": reply.text, "refusal": None}
            if reply.tools:
                message["tool_calls"] = [
                    {
                        "id": f"call_{i}",
                        "type": "function",
                        "function": {"name": n, "arguments": json.dumps(a)},
                    }
                    for i, (n, a) in enumerate(reply.tools)
                ]
            await _json(
                send,
                200,
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "created": 1,
                    "model": model,
                    "choices": [
                        {"index": 0, "message": message, "finish_reason": stop, "logprobs": None}
                    ],
                    "usage": usage,
                },
                check=lambda body: self.check("openai", "CreateChatCompletionResponse", body),
            )
            return
        chunks: list[str] = []

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> None:
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            chunks.append(json.dumps({**base, "choices": [choice], **extra}))

        chunk({"role": "assistant", "content": ""})
        for piece in _split(reply.text, reply.chunks):
            chunk({"content": piece})
        if reply.malformed:
            chunks.append("{not json")
        for i, (name, args) in enumerate(reply.tools):
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": i,
                            "id": f"call_{i}",
                            "type": "function",
                            "function": {"name": name, "arguments": ""},
                        }
                    ]
                }
            )
            for piece in _split(json.dumps(args), 2):
                chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
        chunk({}, stop)
        chunks.append(json.dumps({**base, "choices": [], "usage": usage}))
        for text in chunks:
            if text != "{not json":
                self.check("openai", "CreateChatCompletionStreamResponse", json.loads(text))
        chunks.append("[DONE]")
        await _sse(send, [("", c) for c in chunks], reply.delay)


def _split(text: str, parts: int) -> list[str]:
    size = max(1, -(-len(text) // max(1, parts)))
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


async def _json(send: Any, status: int, body: Any, check: Any = None) -> None:
    if check is not None:
        check(body)
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def _sse(send: Any, events: list[tuple[str, str]], delay: float, check: Any = None) -> None:
    for _, data in events:
        if check is not None and data not in ("[DONE]", "{not json"):
            check(json.loads(data))
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
        }
    )
    for name, data in events:
        head = f"event: {name}\n" if name else ""
        await send(
            {
                "type": "http.response.body",
                "body": f"{head}data: {data}\n\n".encode(),
                "more_body": True,
            }
        )
        if delay:
            await asyncio.sleep(delay)
    await send({"type": "http.response.body", "body": b""})
