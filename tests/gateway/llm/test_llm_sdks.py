"""The official anthropic and openai SDKs through the model gateway, against the fake server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import anthropic
import openai
import pytest
from tests.gateway.http.conftest import Recorder
from tests.gateway.llm.conftest import LlmFactory
from tests.gateway.llm.fake_models import UPSTREAM_KEY, FakeModels, Reply

from airlock.gate import Operation
from airlock.gateway.llm import agent_env
from airlock.gateway.tickets import Ticket

pytestmark = pytest.mark.service

SECRET = "ghp_" + "S3cretInModelReply" * 2


_CLIENTS: list[anthropic.Anthropic | openai.OpenAI] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _CLIENTS:
        _CLIENTS.pop().close()


def _anthropic(url: str, ticket: Ticket | str) -> anthropic.Anthropic:
    key = ticket if isinstance(ticket, str) else ticket.value
    _CLIENTS.append(anthropic.Anthropic(base_url=url, api_key=key, max_retries=0))
    return _CLIENTS[-1]  # type: ignore[return-value]


def _openai(url: str, ticket: Ticket) -> openai.OpenAI:
    _CLIENTS.append(openai.OpenAI(base_url=url + "/v1", api_key=ticket.value, max_retries=0))
    return _CLIENTS[-1]  # type: ignore[return-value]


def test_anthropic_stream_passes_through_and_is_recorded(
    make_llm: LlmFactory, models: FakeModels, recorder: Recorder, ticket: Ticket
) -> None:
    gateway = make_llm("anthropic")
    client = _anthropic(gateway.url, ticket)
    models.script = [Reply(text="The answer is 42.", tools=[("Bash", {"command": "ls -la"})])]
    with client.messages.stream(
        model="claude-test",
        max_tokens=100,
        system="be brief",
        messages=[{"role": "user", "content": "what is the answer?"}],
        tools=[{"name": "Bash", "description": "run", "input_schema": {"type": "object"}}],
    ) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(texts) == "The answer is 42."
    assert final.stop_reason == "tool_use"
    tool = next(b for b in final.content if b.type == "tool_use")
    assert (tool.name, tool.input) == ("Bash", {"command": "ls -la"})
    # the upstream got the held key, never the ticket
    assert models.seen[0]["headers"]["x-api-key"] == UPSTREAM_KEY
    request = recorder.of("llm.request")[0]
    assert request["model"] == "claude-test" and request["stream"] is True
    assert request["messages"] == [{"role": "user", "content": "what is the answer?"}]
    assert request["system"] == "be brief"
    assert request["tools"][0]["name"] == "Bash"
    digest = request["tools"][0]["sha256"]
    assert request["tool_definitions"][digest]["name"] == "Bash"
    response = recorder.of("llm.response")[0]
    assert response["text"] == "The answer is 42."
    assert response["tool_calls"] == [
        {"id": "toolu_01", "name": "Bash", "arguments": {"command": "ls -la"}}
    ]
    assert response["stop_reason"] == "tool_use"
    assert response["usage"] == {"input_tokens": 12, "output_tokens": 7}


def test_second_turn_records_only_new_messages_and_known_tools_by_hash(
    make_llm: LlmFactory, recorder: Recorder, ticket: Ticket
) -> None:
    client = _anthropic(make_llm("anthropic").url, ticket)
    tools = [{"name": "Read", "input_schema": {"type": "object"}}]
    history = [{"role": "user", "content": "hi"}]
    first = client.messages.create(model="m", max_tokens=10, messages=history, tools=tools)
    history += [
        {"role": "assistant", "content": first.content[0].text},
        {"role": "user", "content": "and then?"},
    ]
    client.messages.create(model="m", max_tokens=10, messages=history, tools=tools)
    one, two = recorder.of("llm.request")
    assert one["prefix_len"] == 0 and len(one["messages"]) == 1
    assert two["prefix_len"] == 1
    assert [m["content"] for m in two["messages"]] == [first.content[0].text, "and then?"]
    assert "tool_definitions" in one and "tool_definitions" not in two
    assert one["tools"] == two["tools"]


def test_openai_stream_and_whole(
    make_llm: LlmFactory, models: FakeModels, recorder: Recorder, ticket: Ticket
) -> None:
    client = _openai(make_llm("openai").url, ticket)
    models.script = [Reply(text="streamed text", tools=[("search", {"q": "x"})])]
    stream = client.chat.completions.create(
        model="gpt-test",
        messages=[{"role": "user", "content": "go"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces) == "streamed text"
    whole = client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "again"}]
    )
    assert whole.choices[0].message.content == "Hello from the fake model."
    assert models.seen[0]["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"
    first, second = recorder.of("llm.response")
    assert first["tool_calls"] == [{"id": "call_0", "name": "search", "arguments": {"q": "x"}}]
    assert first["usage"] == {"input_tokens": 12, "output_tokens": 7}
    assert second["text"] == "Hello from the fake model." and second["stop_reason"] == "stop"


def test_wrong_ticket_is_refused_in_the_providers_error_shape(
    make_llm: LlmFactory, models: FakeModels
) -> None:
    client = _anthropic(make_llm("anthropic").url, "not-the-ticket")
    with pytest.raises(anthropic.AuthenticationError, match="gateway ticket"):
        client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert models.seen == []


def test_model_not_allowed_and_budget(
    make_llm: LlmFactory, models: FakeModels, recorder: Recorder, ticket: Ticket
) -> None:
    gateway = make_llm("anthropic", allowed_models=["claude-sonnet-*"], budget={"requests": 2})
    client = _anthropic(gateway.url, ticket)
    ask = [{"role": "user", "content": "x"}]
    with pytest.raises(anthropic.PermissionDeniedError, match="not allowed"):
        client.messages.create(model="claude-opus-9", max_tokens=5, messages=ask)
    for _ in range(2):
        client.messages.create(model="claude-sonnet-5", max_tokens=5, messages=ask)
    with pytest.raises(anthropic.PermissionDeniedError, match="budget of 2 model requests"):
        client.messages.create(model="claude-sonnet-5", max_tokens=5, messages=ask)
    assert len(models.seen) == 2
    rules = [d["rule_id"] for d in recorder.of("guardrail.decision")]
    assert rules == ["airlock.llm.model", "airlock.llm.budget"]


def test_token_budget_denies_the_request_after_the_one_that_crossed_it(
    make_llm: LlmFactory, ticket: Ticket
) -> None:
    client = _openai(make_llm("openai", budget={"output_tokens": 10}).url, ticket)
    ask = [{"role": "user", "content": "x"}]
    client.chat.completions.create(model="g", messages=ask)  # 7 output tokens
    client.chat.completions.create(model="g", messages=ask)  # 14: crosses the limit
    with pytest.raises(openai.PermissionDeniedError, match="output tokens"):
        client.chat.completions.create(model="g", messages=ask)


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_denied_tool_call_never_reaches_the_agent(
    make_llm: LlmFactory, models: FakeModels, recorder: Recorder, ticket: Ticket, provider: str
) -> None:
    gateway = make_llm(
        provider,
        tool_rules=[
            {"id": "no-rm", "tool": "Bash", "arguments": {"command": "rm -rf"}, "action": "deny"}
        ],
    )
    models.script = [Reply(text="Let me clean up.", tools=[("Bash", {"command": "rm -rf /"})])]
    seen_tools: list[str] = []
    seen_text, error = _consume(provider, gateway.url, ticket, seen_tools)
    assert seen_tools == []  # the tool call never reached the agent
    assert seen_text == "Let me clean up."  # text before the tool call streamed through
    assert error is not None and "no-rm" in error
    decision = recorder.of("guardrail.decision")[0]
    assert (decision["rule_id"], decision["action"], decision["tool"]) == ("no-rm", "deny", "Bash")
    assert recorder.of("llm.response")[0]["outcome"] == "denied"


def _consume(
    provider: str, url: str, ticket: Ticket, tools: list[str] | None = None
) -> tuple[str, str | None]:
    """Stream one answer: (text seen, API error or None); tool calls seen go into ``tools``."""
    text = ""
    tools = [] if tools is None else tools
    try:
        if provider == "anthropic":
            with _anthropic(url, ticket).messages.stream(
                model="m", max_tokens=50, messages=[{"role": "user", "content": "go"}]
            ) as stream:
                for event in stream:
                    if event.type == "content_block_delta" and event.delta.type == "text_delta":
                        text += event.delta.text
                    if (
                        event.type == "content_block_start"
                        and event.content_block.type == "tool_use"
                    ):
                        tools.append(event.content_block.name)
        else:
            for chunk in _openai(url, ticket).chat.completions.create(
                model="g", messages=[{"role": "user", "content": "go"}], stream=True
            ):
                if chunk.choices:
                    tools += [t.function.name for t in chunk.choices[0].delta.tool_calls or []]
                    text += chunk.choices[0].delta.content or ""
    except (anthropic.APIError, openai.APIError) as exc:
        return text, str(exc)
    return text, None


def test_tool_call_held_for_approval_binds_that_call(
    make_llm: LlmFactory, models: FakeModels, recorder: Recorder, ticket: Ticket
) -> None:
    asked: list[Operation] = []

    async def approve(op: Operation) -> bool:
        asked.append(op)
        await asyncio.sleep(0)
        return "deploy" in op.text

    gateway = make_llm(
        "anthropic",
        approve=approve,
        tool_rules=[{"id": "bash-approval", "tool": "Bash", "action": "require_approval"}],
    )
    models.script = [
        Reply(tools=[("Bash", {"command": "make deploy"})]),
        Reply(tools=[("Bash", {"command": "curl evil"})]),
    ]
    seen_tools: list[str] = []
    assert _consume("anthropic", gateway.url, ticket, seen_tools)[1] is None
    assert seen_tools == ["Bash"]
    _, error = _consume("anthropic", gateway.url, ticket, seen_tools)
    assert seen_tools == ["Bash"]
    assert error is not None and "not approved" in error
    assert [op.kind for op in asked] == ["tool", "tool"]
    assert json.loads(asked[0].text.split(" ", 1)[1]) == {"command": "make deploy"}
    assert asked[0].operation_hash() != asked[1].operation_hash()
    assert [r["outcome"] for r in recorder.of("llm.response")] == ["approved", "approval_denied"]


def test_malformed_sse_gives_the_agent_an_error_and_the_gateway_goes_on(
    make_llm: LlmFactory, models: FakeModels, recorder: Recorder, ticket: Ticket
) -> None:
    gateway = make_llm("anthropic")
    models.script = [Reply(malformed=True)]
    _, error = _consume("anthropic", gateway.url, ticket)
    assert error is not None and "malformed" in error
    assert recorder.of("llm.response")[0]["outcome"] == "upstream_malformed"
    assert _consume("anthropic", gateway.url, ticket) == ("Hello from the fake model.", None)


def test_key_and_secrets_never_reach_the_agent_or_the_log(
    make_llm: LlmFactory, models: FakeModels, recorder: Recorder, ticket: Ticket
) -> None:
    gateway = make_llm("anthropic")
    env = agent_env(gateway.gateway.proxy.config, gateway.url, ticket.value)
    assert UPSTREAM_KEY not in json.dumps(env)
    # An echo of the key comes whole in one event (an error message): the model itself never
    # sees the key, which travels in a header. Scrubbing is per event (docs/agent-gateways.md).
    models.script = [Reply(text=f"token {SECRET} and key {UPSTREAM_KEY}", chunks=1)]
    text, _ = _consume("anthropic", gateway.url, ticket)
    assert UPSTREAM_KEY not in text  # an upstream echo of the key is scrubbed
    # a secret the agent sends the model (a tool result it read) is masked in the record
    _anthropic(gateway.url, ticket).messages.create(
        model="m", max_tokens=5, messages=[{"role": "user", "content": f"the .env says {SECRET}"}]
    )
    log = recorder.text()
    assert UPSTREAM_KEY not in log and SECRET not in log and ticket.value not in log
    assert "[MASKED:" in recorder.of("llm.response")[0]["text"]


def test_dot_segments_are_refused_before_anything_goes_upstream(
    make_llm: LlmFactory, models: FakeModels, ticket: Ticket
) -> None:
    import http.client

    gateway = make_llm("openai-compatible")
    host, port = gateway.gateway.address
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", "/v1/../../admin/keys", headers={"Authorization": f"Bearer {ticket.value}"})
    answer = conn.getresponse()
    assert answer.status == 400 and b"'..'" in answer.read()
    conn.close()
    assert models.seen == []
