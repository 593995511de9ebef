"""The PostgreSQL gateway: sans-I/O protocol (``protocol``), SQL guardrails (``guard``), column
masking (``masking``), SCRAM client (``scram``) and the asyncio server (``server``)."""

from airlock.gateway.postgres.guard import Judgement, SqlGuard, analyse_sql
from airlock.gateway.postgres.protocol import ProtocolError
from airlock.gateway.postgres.server import (
    PostgresGateway,
    ThreadedGateway,
    UpstreamLogin,
    resolve_login,
    serve_postgres,
    start_in_thread,
)

__all__ = [
    "Judgement",
    "PostgresGateway",
    "ProtocolError",
    "SqlGuard",
    "ThreadedGateway",
    "UpstreamLogin",
    "analyse_sql",
    "resolve_login",
    "serve_postgres",
    "start_in_thread",
]
