"""Fixtures for the HTTP gateway tests: a real upstream, a gateway factory, a recorder."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from tests.gateway.http.servers import ThreadedServer, upstream_app

from airlock.gate import Operation
from airlock.gateway.http import ProxySettings, ThreadedHttpGateway, start_in_thread
from airlock.gateway.tickets import Ticket, TicketCheck
from airlock.mask import Masker, MaskSettings
from airlock.policy.gateways import HttpGatewayConfig
from airlock.policy.guardrails import GuardrailDefaults, GuardrailRule

TOKEN = "upstream-held-token-" + "q" * 24


class Recorder:
    """Collects ``record(type, data)`` calls, as the session writer would receive them."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, type_: str, data: Any) -> None:
        self.events.append((type_, dict(data)))

    def of(self, type_: str) -> list[dict[str, Any]]:
        return [d for t, d in self.events if t == type_]

    def text(self) -> str:
        import json

        return "\n".join(json.dumps(d) for _, d in self.events)


@pytest.fixture(scope="session")
def upstream() -> Iterator[ThreadedServer]:
    server = ThreadedServer(upstream_app).start()
    yield server
    server.stop()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def ticket() -> Ticket:
    return Ticket.issue("session-1", "api")


GatewayFactory = Callable[..., ThreadedHttpGateway]


@pytest.fixture
def make_gateway(
    upstream: ThreadedServer, recorder: Recorder, ticket: Ticket
) -> Iterator[GatewayFactory]:
    started: list[ThreadedHttpGateway] = []

    def factory(
        *,
        upstream_url: str | None = None,
        credential: dict[str, Any] | str | None = "bearer",
        rules: list[dict[str, Any]] | None = None,
        approve: Callable[[Operation], Any] | None = None,
        environ: dict[str, str] | None = None,
        settings: ProxySettings | None = None,
        masker: Masker | None = None,
        defaults: GuardrailDefaults | None = None,
        ticket_check: TicketCheck | None = None,
        **fields: Any,
    ) -> ThreadedHttpGateway:
        config = HttpGatewayConfig.model_validate(
            {
                "name": "api",
                "kind": "http",
                "upstream": upstream_url or upstream.url,
                "credential": {"env": {"bearer": "API_TOKEN"}}
                if credential == "bearer"
                else credential,
                **fields,
            }
        )
        gateway = start_in_thread(
            config,
            masker=masker or Masker(MaskSettings()),
            record=recorder,
            approve=approve,
            ticket=ticket_check or ticket,
            guardrails=[GuardrailRule.model_validate(r) for r in rules or []],
            environ={"API_TOKEN": TOKEN} if environ is None else environ,
            settings=settings,
            defaults=defaults,
        )
        started.append(gateway)
        return gateway

    yield factory
    for gateway in started:
        gateway.close()
