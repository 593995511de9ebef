"""The model gateway's sans-I/O parts: SSE parsing, assembly, conversation deltas, tool rules."""

from __future__ import annotations

import itertools
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from airlock.gateway.llm.conversation import Conversation
from airlock.gateway.llm.providers import assembler_for, read_request
from airlock.gateway.llm.sse import SseEvent, SseParser
from airlock.policy.agent_gateways import ToolRule, decide_tool

STREAM = (
    b"event: message_start\ndata: {}\n\n: keep-alive\r\n\r\n"
    b"data: line one\r\ndata: line two\r\n\r\nevent: x\rdata: cr only\r\r"
    b"data: unterminated"
)


def _parse_in(pieces: list[bytes]) -> list[SseEvent]:
    parser = SseParser()
    out = [event for piece in pieces for event in parser.feed(piece)]
    return out + parser.close()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_any_split_of_the_stream_gives_the_same_events(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(STREAM)]
    pieces = [STREAM[a:b] for a, b in itertools.pairwise(bounds)]
    events = _parse_in(pieces)
    assert events == _parse_in([STREAM])
    assert b"".join(e.raw for e in events) == STREAM  # forwarded bytes are exactly the input
    assert [(e.event, e.data) for e in events] == [
        ("message_start", "{}"),
        ("", ""),
        ("", "line one\nline two"),
        ("x", "cr only"),
        ("", "unterminated"),
    ]


def test_anthropic_stream_assembles_text_tool_arguments_and_usage() -> None:
    assembler = assembler_for("anthropic")
    events = [
        {"type": "message_start", "message": {"model": "m1", "usage": {"input_tokens": 5}}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        {"type": "content_block_start", "index": 1,
         "content_block": {"type": "tool_use", "id": "t1", "name": "Bash", "input": {}}},
        {"type": "content_block_delta", "index": 1,
         "delta": {"type": "input_json_delta", "partial_json": '{"command": "l'}},
        {"type": "content_block_delta", "index": 1,
         "delta": {"type": "input_json_delta", "partial_json": 's"}'}},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"},
         "usage": {"output_tokens": 9}},
    ]  # fmt: skip
    opened = [assembler.feed(SseEvent("", json.dumps(e), b"")) for e in events]
    assert opened == [False, False, True, False, False, False]
    response = assembler.response
    assert (response.model, response.joined_text(), response.stop_reason) == (
        "m1",
        "Hi",
        "tool_use",
    )
    assert [(t.name, t.arguments) for t in response.tool_calls] == [("Bash", {"command": "ls"})]
    assert (response.input_tokens, response.output_tokens) == (5, 9)


def test_malformed_event_is_noted_not_raised() -> None:
    assembler = assembler_for("openai")
    assert assembler.feed(SseEvent("", "{not json", b"")) is False
    assert assembler.feed(SseEvent("", "[DONE]", b"")) is False
    assert "malformed" in assembler.response.errors[0]


def test_request_reading_refuses_what_the_api_would() -> None:
    for body in (b"nope", b"[]", b'{"messages": []}', b'{"model": "m"}'):
        try:
            read_request("anthropic", body)
        except ValueError:
            continue
        raise AssertionError(f"accepted {body!r}")


def test_conversation_records_each_message_once_and_keeps_parallel_threads_apart() -> None:
    conv = Conversation()
    a1 = [{"role": "user", "content": "a"}]
    assert conv.delta("sys", a1).prefix_len == 0
    a2 = [*a1, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    delta = conv.delta("sys", a2)
    assert (delta.prefix_len, [m["content"] for m in delta.new]) == (1, ["b", "c"])
    other = conv.delta("another system prompt", a1)  # a sub-agent: same message, other chain
    assert other.prefix_len == 0
    edited = [{"role": "user", "content": "A"}, *a2[1:]]  # history rewritten: all new again
    assert conv.delta("sys", edited).prefix_len == 0


def test_tool_rules_strictest_wins_and_arguments_match_by_path() -> None:
    rules = [
        ToolRule(id="bash-ok", tool="Bash", action="allow"),
        ToolRule(id="rm", tool="Bash", arguments={"command": r"rm\s+-rf"}, action="deny"),
        ToolRule(id="nested", tool="mcp__*", arguments={"opts.force": "true"}, action="require_approval"),
    ]  # fmt: skip
    assert decide_tool("Bash", {"command": "ls"}, rules, "deny", "llm").rule_id == "bash-ok"
    assert decide_tool("Bash", {"command": "rm -rf /"}, rules, "allow", "llm").action == "deny"
    found = decide_tool("mcp__gh__merge", {"opts": {"force": True}}, rules, "allow", "llm")
    assert (found.rule_id, found.action) == ("nested", "require_approval")
    fallback = decide_tool("Read", {}, rules, "deny", "mcp")
    assert (fallback.rule_id, fallback.action) == ("airlock.default.mcp_tool", "deny")


def test_the_gateways_own_errors_follow_the_published_descriptions() -> None:
    from tests.gateway.llm.openapi_specs import violations

    from airlock.gateway.llm.providers import error_body

    for kind in ("permission_error", "authentication_error", "invalid_request_error", "api_error"):
        body = json.loads(error_body("anthropic", kind, "refused by Airlock"))
        assert violations("anthropic", "ErrorResponse", body) == []
    body = json.loads(error_body("openai", "permission_error", "refused by Airlock"))
    assert violations("openai", "ErrorResponse", body) == []
