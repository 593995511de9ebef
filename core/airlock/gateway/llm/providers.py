"""What the gateway reads from the two model APIs, sans-I/O.

    Anthropic Messages API      POST /v1/messages           key in ``x-api-key``
    OpenAI Chat Completions     POST /v1/chat/completions   key in ``Authorization: Bearer``

:func:`read_request` turns a request body into a :class:`ModelRequest`; a :class:`Assembler`
(one per response) is fed the streamed events or the whole JSON body and builds the
:class:`ModelResponse` that is recorded: text, tool calls with their arguments, stop reason and
token usage. Malformed pieces are noted in ``ModelResponse.errors`` and never raise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from airlock.gateway.llm.sse import SseEvent

__all__ = [
    "Assembler",
    "ModelRequest",
    "ModelResponse",
    "Provider",
    "ToolCall",
    "assembler_for",
    "error_body",
    "read_request",
    "stream_error",
]

Provider = Literal["anthropic", "openai"]


@dataclass(frozen=True)
class ModelRequest:
    """The parts of a request the gateway judges and records."""

    model: str
    stream: bool
    messages: list[Any]
    system: Any = None
    tools: list[Any] = field(default_factory=list)


@dataclass
class ToolCall:
    """A tool call the model asks for. ``arguments`` is parsed JSON (or the raw text)."""

    id: str
    name: str
    arguments_text: str = ""

    @property
    def arguments(self) -> Any:
        try:
            return json.loads(self.arguments_text) if self.arguments_text else {}
        except ValueError:
            return self.arguments_text


@dataclass
class ModelResponse:
    """A response as assembled from the stream (or the body)."""

    model: str = ""
    text: list[str] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    stop_reason: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    errors: list[str] = field(default_factory=list)

    def joined_text(self) -> str:
        return "".join(self.text)


class RequestError(ValueError):
    """The request body is not one the API accepts (the gateway answers 400)."""


def read_request(provider: Provider, body: bytes) -> ModelRequest:
    """Parse a request body; RequestError says what is wrong."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError("the request body is not JSON") from exc
    if not isinstance(data, dict):
        raise RequestError("the request body must be a JSON object")
    model, messages = data.get("model"), data.get("messages")
    if not isinstance(model, str) or not model:
        raise RequestError("the request names no model")
    if not isinstance(messages, list):
        raise RequestError("the request has no messages list")
    tools = data.get("tools") if isinstance(data.get("tools"), list) else []
    system = data.get("system") if provider == "anthropic" else None
    return ModelRequest(model, data.get("stream") is True, messages, system, list(tools or []))


def tool_name(provider: Provider, tool: Any) -> str:
    """A tool definition's name (OpenAI nests it under ``function``)."""
    if not isinstance(tool, dict):
        return ""
    if provider == "openai" and isinstance(tool.get("function"), dict):
        return str(tool["function"].get("name", ""))
    return str(tool.get("name", ""))


class Assembler:
    """Builds a :class:`ModelResponse`; ``feed`` returns True when the event opens a tool call
    (from then on the gateway may hold the stream until the calls are judged)."""

    def __init__(self) -> None:
        self.response = ModelResponse()

    def feed(self, event: SseEvent) -> bool:
        raise NotImplementedError

    def whole(self, body: bytes) -> None:
        raise NotImplementedError

    def _json(self, text: str) -> Any:
        try:
            return json.loads(text)
        except ValueError:
            self.response.errors.append(f"malformed JSON in an event: {text[:80]!r}")
            return None


class AnthropicAssembler(Assembler):
    """Messages API: message_start, content_block_*, message_delta, message_stop, error."""

    def __init__(self) -> None:
        super().__init__()
        self._blocks: dict[int, ToolCall] = {}

    def feed(self, event: SseEvent) -> bool:
        if not event.data:
            return False
        data = self._json(event.data)
        if not isinstance(data, dict):
            return False
        kind = data.get("type") or event.event
        handler = getattr(self, "_on_" + str(kind), None)
        return bool(handler(data)) if handler is not None else False

    def _on_message_start(self, data: dict[str, Any]) -> None:
        message = _obj(data.get("message"))
        self.response.model = str(message.get("model", ""))
        self._usage(message.get("usage"))

    def _on_content_block_start(self, data: dict[str, Any]) -> bool:
        block = _obj(data.get("content_block"))
        if block.get("type") == "text" and block.get("text"):
            self.response.text.append(str(block["text"]))
        if block.get("type") != "tool_use":
            return False
        call = ToolCall(str(block.get("id", "")), str(block.get("name", "")))
        if block.get("input"):
            call.arguments_text = json.dumps(block["input"])
        self._blocks[_int(data.get("index"))] = call
        self.response.tool_calls.append(call)
        return True

    def _on_content_block_delta(self, data: dict[str, Any]) -> None:
        delta = _obj(data.get("delta"))
        if delta.get("type") == "text_delta":
            self.response.text.append(str(delta.get("text", "")))
        elif delta.get("type") == "input_json_delta":
            call = self._blocks.get(_int(data.get("index")))
            if call is not None:
                call.arguments_text += str(delta.get("partial_json", ""))

    def _on_message_delta(self, data: dict[str, Any]) -> None:
        delta = _obj(data.get("delta"))
        if delta.get("stop_reason"):
            self.response.stop_reason = str(delta["stop_reason"])
        self._usage(data.get("usage"))

    def _on_error(self, data: dict[str, Any]) -> None:
        error = _obj(data.get("error"))
        self.response.errors.append(f"upstream error: {error.get('type')}: {error.get('message')}")

    def _usage(self, usage: Any) -> None:
        if isinstance(usage, dict):
            if isinstance(usage.get("input_tokens"), int):
                self.response.input_tokens = usage["input_tokens"]
            if isinstance(usage.get("output_tokens"), int):
                self.response.output_tokens = usage["output_tokens"]

    def whole(self, body: bytes) -> None:
        data = self._json(body.decode("utf-8", "replace"))
        if not isinstance(data, dict):
            return
        if data.get("type") == "error":
            self._on_error(data)
            return
        self.response.model = str(data.get("model", ""))
        self.response.stop_reason = data.get("stop_reason")
        self._usage(data.get("usage"))
        for block in data.get("content") or []:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text":
                self.response.text.append(str(block.get("text", "")))
            elif block.get("type") == "tool_use":
                text = json.dumps(block.get("input", {}))
                call = ToolCall(str(block.get("id", "")), str(block.get("name", "")), text)
                self.response.tool_calls.append(call)


class OpenAIAssembler(Assembler):
    """Chat Completions: ``chat.completion.chunk`` objects, then ``[DONE]``."""

    def __init__(self) -> None:
        super().__init__()
        self._calls: dict[int, ToolCall] = {}

    def feed(self, event: SseEvent) -> bool:
        if not event.data or event.data.strip() == "[DONE]":
            return False
        data = self._json(event.data)
        if not isinstance(data, dict):
            return False
        if isinstance(data.get("error"), dict):
            self.response.errors.append(f"upstream error: {data['error'].get('message')}")
            return False
        self.response.model = str(data.get("model", self.response.model))
        self._usage(data.get("usage"))
        opened = False
        for choice in data.get("choices") or []:
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                opened |= self._choice(choice, choice.get("delta"))
        return opened

    def _choice(self, choice: dict[str, Any], delta: Any) -> bool:
        if choice.get("finish_reason"):
            self.response.stop_reason = str(choice["finish_reason"])
        if not isinstance(delta, dict):
            return False
        if isinstance(delta.get("content"), str):
            self.response.text.append(delta["content"])
        opened = False
        for part in delta.get("tool_calls") or []:
            if not isinstance(part, dict):
                continue
            index = _int(part.get("index"))
            function = _obj(part.get("function"))
            call = self._calls.get(index)
            if call is None:
                call = ToolCall(str(part.get("id", "")), str(function.get("name", "")))
                self._calls[index] = call
                self.response.tool_calls.append(call)
                opened = True
            call.arguments_text += str(function.get("arguments") or "")
        return opened

    def _usage(self, usage: Any) -> None:
        if isinstance(usage, dict):
            if isinstance(usage.get("prompt_tokens"), int):
                self.response.input_tokens = usage["prompt_tokens"]
            if isinstance(usage.get("completion_tokens"), int):
                self.response.output_tokens = usage["completion_tokens"]

    def whole(self, body: bytes) -> None:
        data = self._json(body.decode("utf-8", "replace"))
        if not isinstance(data, dict):
            return
        if isinstance(data.get("error"), dict):
            self.response.errors.append(f"upstream error: {data['error'].get('message')}")
            return
        self.response.model = str(data.get("model", ""))
        self._usage(data.get("usage"))
        choices = data.get("choices") or [{}]
        choice = choices[0] if isinstance(choices[0], dict) else {}
        message = _obj(choice.get("message"))
        self.response.stop_reason = choice.get("finish_reason")
        if isinstance(message.get("content"), str):
            self.response.text.append(message["content"])
        for part in message.get("tool_calls") or []:
            function = part.get("function") if isinstance(part, dict) else None
            if isinstance(function, dict):
                self.response.tool_calls.append(
                    ToolCall(
                        str(part.get("id", "")),
                        str(function.get("name", "")),
                        str(function.get("arguments") or ""),
                    )
                )


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else -1


def assembler_for(provider: Provider) -> Assembler:
    """A fresh assembler for one response of ``provider``."""
    return AnthropicAssembler() if provider == "anthropic" else OpenAIAssembler()


def error_body(provider: Provider, kind: str, message: str) -> bytes:
    """A JSON error body in the provider's own shape (its SDKs raise it as an API error)."""
    if provider == "anthropic":
        shaped: dict[str, Any] = {
            "type": "error",
            "error": {"type": kind, "message": message},
            "request_id": None,
        }
    else:
        shaped = {"error": {"message": message, "type": kind, "param": None, "code": kind}}
    return json.dumps(shaped).encode()


def stream_error(provider: Provider, kind: str, message: str) -> bytes:
    """An SSE event that ends a stream with an error the provider's SDK raises."""
    body = error_body(provider, kind, message)
    if provider == "anthropic":
        return b"event: error\ndata: " + body + b"\n\n"
    return b"data: " + body + b"\n\n"
