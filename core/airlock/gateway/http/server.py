"""Run the HTTP gateway (``gateway/serving.py``), in the caller's loop or a thread.

    gateway = await serve_http(config, masker=m, record=w.append, approve=a, ticket=t,
                               guardrails=policy.guardrails, defaults=policy.guardrail_defaults)
    gateway.url  # http://127.0.0.1:PORT  (the agent adds the ticket)
    await gateway.close()

``start_in_thread(...)`` runs the same in a background thread with its own event loop, for
``airlock run``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from airlock.errors import InfrastructureUnavailable
from airlock.gateway.h1.client import Pool, Timeouts
from airlock.gateway.http.credentials import load_injector
from airlock.gateway.http.proxy import Approve, HttpProxy, ProxySettings, Record
from airlock.gateway.serving import ProxyGateway, ThreadedGateway, bind, serve_asgi
from airlock.gateway.serving import start_in_thread as _start
from airlock.gateway.tickets import TicketCheck
from airlock.mask import Masker
from airlock.policy.gateways import HttpGatewayConfig
from airlock.policy.guardrails import GuardrailDefaults, GuardrailRule, rules_for_gateway

__all__ = [
    "HttpGateway",
    "HttpGatewayError",
    "ThreadedHttpGateway",
    "serve_http",
    "start_in_thread",
]

_UPSTREAM_TIMEOUT = Timeouts(connect=10.0, read=300.0, write=300.0, pool=30.0)


class HttpGatewayError(InfrastructureUnavailable):
    """The HTTP gateway could not start or stopped unexpectedly."""

    default_hint = "check the gateway's listen address in airlock.yaml (is the port free?)"


HttpGateway = ProxyGateway[HttpProxy]
ThreadedHttpGateway = ThreadedGateway[HttpGateway]


async def serve_http(
    config: HttpGatewayConfig,
    *,
    masker: Masker,
    record: Record,
    approve: Approve | None,
    ticket: TicketCheck,
    guardrails: Sequence[GuardrailRule] = (),
    defaults: GuardrailDefaults | None = None,
    environ: Mapping[str, str] | None = None,
    settings: ProxySettings | None = None,
) -> HttpGateway:
    """Start the gateway described by ``config`` and return once it accepts connections.

    The held credential is read from ``environ`` (default: ``os.environ``) and registered with
    ``masker``; ``guardrails`` are filtered to the rules that apply to this gateway.
    """
    injector = load_injector(
        config.credential, os.environ if environ is None else environ, masker, config.name
    )
    # no proxy variables, no ~/.netrc credentials: the pool reads no environment
    pool = Pool(config.upstream, _UPSTREAM_TIMEOUT, max_connections=256, max_idle=64)
    proxy = HttpProxy(
        config,
        masker=masker,
        record=record,
        approve=approve,
        ticket=ticket,
        injector=injector,
        pool=pool,
        rules=rules_for_gateway(guardrails, config.name, "http"),
        defaults=defaults,
        settings=settings,
    )
    sock = bind(config, HttpGatewayError)
    server = await serve_asgi(proxy, sock, name=f"airlock-http-{config.name}")
    return HttpGateway(config.name, proxy, server, pool)


def start_in_thread(config: HttpGatewayConfig, **kwargs: Any) -> ThreadedHttpGateway:
    """:func:`serve_http` in a background thread; returns once it accepts connections.

    Raises what :func:`serve_http` raises (ConfigError for a missing credential variable,
    HttpGatewayError when the address is taken).
    """
    return _start(lambda: serve_http(config, **kwargs), name=f"airlock-http-{config.name}")
