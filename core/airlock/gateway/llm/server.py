"""Run the model gateway (``gateway/serving.py``), in the caller's loop or a thread.

gateway = await serve_llm(config, masker=m, record=w.append, approve=a, ticket=t,
                          environ=os.environ)
gateway.url   # http://127.0.0.1:PORT: ANTHROPIC_BASE_URL, or OPENAI_BASE_URL (+ /v1)
await gateway.close()
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import httpx

from airlock.errors import ConfigError, InfrastructureUnavailable
from airlock.gateway.approvals import Approve
from airlock.gateway.llm.proxy import LlmProxy, Record
from airlock.gateway.serving import ProxyGateway, ThreadedGateway, bind, serve_asgi
from airlock.gateway.serving import start_in_thread as _start
from airlock.gateway.tickets import TicketCheck
from airlock.mask import Masker
from airlock.policy.agent_gateways import LlmGatewayConfig

__all__ = ["LlmGateway", "LlmGatewayError", "ThreadedLlmGateway", "serve_llm", "start_in_thread"]

_TIMEOUT = httpx.Timeout(connect=10.0, read=600.0, write=60.0, pool=30.0)


class LlmGatewayError(InfrastructureUnavailable):
    """The model gateway could not start."""

    default_hint = "check the gateway's listen address in airlock.yaml (is the port free?)"


LlmGateway = ProxyGateway[LlmProxy]
ThreadedLlmGateway = ThreadedGateway[LlmGateway]


def held_key(config: LlmGatewayConfig, environ: Mapping[str, str]) -> str:
    """The API key from ``environ``; ConfigError naming the variable when it is missing."""
    key = environ.get(config.key_env, "")
    if not key:
        raise ConfigError(
            f"gateway {config.name}: the model API key variable {config.key_env} is not set",
            hint=f"set {config.key_env} in the job's environment (Airlock holds it; the agent "
            "gets a ticket), or name another variable with credential: {env: NAME}",
        )
    return key


def agent_env(config: LlmGatewayConfig, url: str, ticket: str) -> dict[str, str]:
    """The variables that point the agent's SDK at the gateway, with the ticket as its key."""
    if config.provider == "anthropic":
        return {"ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": ticket}
    return {"OPENAI_BASE_URL": url + "/v1", "OPENAI_API_KEY": ticket}


async def serve_llm(
    config: LlmGatewayConfig,
    *,
    masker: Masker,
    record: Record,
    approve: Approve | None,
    ticket: TicketCheck,
    environ: Mapping[str, str] | None = None,
    **_: Any,
) -> LlmGateway:
    """Start the gateway described by ``config``; returns once it accepts connections."""
    key = held_key(config, os.environ if environ is None else environ)
    masker.add_secret(key, "gateway-credential")
    client = httpx.AsyncClient(timeout=_TIMEOUT, follow_redirects=False, trust_env=False)
    proxy = LlmProxy(
        config,
        key=key,
        masker=masker,
        record=record,
        approve=approve,
        ticket=ticket,
        client=client,
    )
    sock = bind(config, LlmGatewayError)
    server = await serve_asgi(proxy, sock, name=f"airlock-llm-{config.name}")
    return LlmGateway(config.name, proxy, server, client)


def start_in_thread(config: LlmGatewayConfig, **kwargs: Any) -> ThreadedLlmGateway:
    """:func:`serve_llm` in a background thread; raises what it raises."""
    return _start(lambda: serve_llm(config, **kwargs), name=f"airlock-llm-{config.name}")
