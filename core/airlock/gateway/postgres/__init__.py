"""The PostgreSQL gateway: sans-I/O wire protocol (``messages``, ``framing``, ``decode``,
``encode``), the sans-I/O relay (``relay`` for what the client sends, ``results`` for what comes
back), SQL reading and guardrails (``analysis``, ``plpgsql``, ``tautology``, ``parse_state``,
``guard``), column masking (``masking``), SCRAM client (``scram``) and the asyncio server
(``server``, ``connection``)."""

from airlock.gateway.postgres.guard import Judgement, SqlGuard, analyse_sql
from airlock.gateway.postgres.messages import ProtocolError
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
