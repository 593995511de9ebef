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
        if scope["path"] == "/v1/messages":
            self.check("anthropic", "CreateMessageParams", data)
            await self._anthropic(send, data, reply)
        elif scope["path"] == "/v1/chat/completions":
            self.check("openai", "CreateChatCompletionRequest", data)
            await self._openai(send, data, reply)
        elif scope["path"] == "/v1/models":
            await _json(send, 200, {"data": [{"id": "claude-test", "type": "model"}]})
        else:
            await _json(send, 404, {"error": "not found"})

    async def _anthropic(self, send: Any, request: dict[str, Any], reply: Reply) -> None:
        model = request.get("model", "claude-test")
        stop = "tool_use" if reply.tools else "end_turn"
        if not request.get("stream"):
            content: list[dict[str, Any]] = [{"type": "text", "text": reply.text}]
            content += [
                {"type": "tool_use", "id": f"toolu_{i:02d}", "name": n, "input": a}
                for i, (n, a) in enumerate(reply.tools)
            ]
            await _json(
                send,
                200,
                {
                    "id": "msg_01",
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": content,
                    "stop_reason": stop,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 12, "output_tokens": 7},
                },
            )
            return
        events: list[tuple[str, Any]] = [
            (
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": "msg_01",
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": {"input_tokens": 12, "output_tokens": 1},
                    },
                },
            )
        ]
        events.append(
            (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
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
                        "content_block": {
                            "type": "tool_use",
                            "id": f"toolu_{i:02d}",
                            "name": name,
                            "input": {},
                        },
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
                    "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": {"output_tokens": 7},
                },
            )
        )
        events.append(("message_stop", {"type": "message_stop"}))
        await _sse(
            send, [(n, d if isinstance(d, str) else json.dumps(d)) for n, d in events], reply.delay
        )

    async def _openai(self, send: Any, request: dict[str, Any], reply: Reply) -> None:
        model = request.get("model", "gpt-test")
        stop = "tool_calls" if reply.tools else "stop"
        usage = {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}
        base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model}
        if not request.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": reply.text}
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


async def _json(send: Any, status: int, body: Any) -> None:
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


async def _sse(send: Any, events: list[tuple[str, str]], delay: float) -> None:
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
