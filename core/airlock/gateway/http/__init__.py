"""The HTTP gateway: a reverse proxy per upstream that holds the credential, checks the ticket,
enforces guardrails, and records every request and response (masked, bodies capped).

See ``proxy.py`` for the order of checks and docs/gateways.md for what it guarantees.
"""

from __future__ import annotations

from airlock.gateway.http.proxy import HttpProxy, ProxySettings
from airlock.gateway.http.server import (
    HttpGateway,
    HttpGatewayError,
    ThreadedHttpGateway,
    serve_http,
    start_in_thread,
)

__all__ = [
    "HttpGateway",
    "HttpGatewayError",
    "HttpProxy",
    "ProxySettings",
    "ThreadedHttpGateway",
    "serve_http",
    "start_in_thread",
]
