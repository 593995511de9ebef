"""Fixtures for the model gateway tests: the fake model server, a gateway factory, a recorder."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from tests.gateway.http.conftest import Recorder
from tests.gateway.http.servers import ThreadedServer
from tests.gateway.llm.fake_models import UPSTREAM_KEY, FakeModels

from airlock.gate import Operation
from airlock.gateway.llm import ThreadedLlmGateway, start_in_thread
from airlock.gateway.tickets import Ticket
from airlock.mask import Masker, MaskSettings
from airlock.policy.agent_gateways import LlmGatewayConfig


@pytest.fixture
def models() -> Iterator[FakeModels]:
    fake = FakeModels()
    server = ThreadedServer(fake).start()
    fake.url = server.url
    yield fake
    server.stop()
    assert fake.violations == [], "the fake model server left its OpenAPI description"


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def ticket() -> Ticket:
    return Ticket.issue("session-1", "model")


LlmFactory = Callable[..., ThreadedLlmGateway]


@pytest.fixture
def make_llm(models: FakeModels, recorder: Recorder, ticket: Ticket) -> Iterator[LlmFactory]:
    started: list[ThreadedLlmGateway] = []

    def factory(
        provider: str = "anthropic",
        *,
        approve: Callable[[Operation], Any] | None = None,
        masker: Masker | None = None,
        **fields: Any,
    ) -> ThreadedLlmGateway:
        upstream = models.url + ("/v1" if provider != "anthropic" else "")
        config = LlmGatewayConfig.model_validate(
            {"name": "model", "kind": "llm", "provider": provider, "upstream": upstream, **fields}
        )
        gateway = start_in_thread(
            config,
            masker=masker or Masker(MaskSettings()),
            record=recorder,
            approve=approve,
            ticket=ticket,
            environ={config.key_env: UPSTREAM_KEY},
        )
        started.append(gateway)
        return gateway

    yield factory
    for gateway in started:
        gateway.close()
