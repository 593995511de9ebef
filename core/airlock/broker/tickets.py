"""Central mode: tickets for gateways that run next to the broker, off the runner.

A job asks for a ticket to a named central gateway with its job token; the gateway, which never
sees job tokens or OIDC tokens, checks each ticket a client presents with the broker,
authenticating with its own token (configured as a SHA-256 in ``central_gateways:``). Tickets
are stored hashed, bound to one gateway and one job, and expire.

    POST /v1/gateway-tickets        Bearer <job token>      {gateway}          → {ticket, …}
    POST /v1/gateway-tickets/check  Bearer <gateway token>  {gateway, ticket}  → {subject} | 403
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from airlock.broker.service import Broker
from airlock.broker.state import token_digest
from airlock.errors import PolicyDenied, UsageError

__all__ = ["TicketService", "ticket_routes"]

_META = sa.MetaData()
TICKETS = sa.Table(
    "airlock_gateway_tickets",
    _META,
    sa.Column("ticket_sha", sa.String(64), primary_key=True),
    sa.Column("gateway", sa.String(64), nullable=False),
    sa.Column("job_digest", sa.String(64), nullable=False),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
)
Handler = Callable[[Request], Awaitable[Response]]


class IssueBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gateway: str = Field(min_length=1, max_length=64)


class CheckBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gateway: str = Field(min_length=1, max_length=64)
    ticket: str = Field(min_length=16, max_length=256)


class TicketService:
    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._engine = broker.store.engine
        _META.create_all(self._engine)

    def issue(self, job_token: str, gateway: str) -> dict[str, Any]:
        central = self._broker.config.central_gateways.get(gateway)
        if central is None:
            raise UsageError(f"no central gateway named {gateway!r} at this broker")
        digest = token_digest(job_token)
        subject = self._broker.store.job_subject(digest)
        if subject is None:
            raise PolicyDenied("unknown or expired job token")
        ticket = secrets.token_urlsafe(32)
        expires = time.time() + central.ticket_ttl
        with self._engine.begin() as conn:
            conn.execute(sa.delete(TICKETS).where(TICKETS.c.expires_at < time.time()))
            conn.execute(
                sa.insert(TICKETS).values(
                    ticket_sha=token_digest(ticket),
                    gateway=gateway,
                    job_digest=digest,
                    subject=json.dumps(subject, sort_keys=True),
                    expires_at=expires,
                )
            )
        return {"ticket": ticket, "gateway": gateway, "expires_at": expires}

    def check(self, gateway_token: str, gateway: str, ticket: str) -> dict[str, Any]:
        central = self._broker.config.central_gateways.get(gateway)
        presented = hashlib.sha256(gateway_token.encode()).hexdigest()
        if central is None or not hmac.compare_digest(presented, central.token_sha256):
            raise PolicyDenied("this gateway is not known to the broker")
        query = sa.select(TICKETS).where(
            TICKETS.c.ticket_sha == token_digest(ticket),
            TICKETS.c.gateway == gateway,
            TICKETS.c.expires_at > time.time(),
        )
        with self._engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            raise PolicyDenied("ticket refused")
        return {"subject": json.loads(row.subject), "expires_at": row.expires_at}


def ticket_routes(broker: Broker) -> list[tuple[str, Handler, list[str], str]]:
    """``(path, handler, methods, name)`` for the broker app's route list."""
    service = TicketService(broker)

    async def issue(request: Request) -> Response:
        body = IssueBody.model_validate(await _json(request))
        result = await run_in_threadpool(service.issue, _bearer(request), body.gateway)
        return JSONResponse(result, status_code=201, headers={"Cache-Control": "no-store"})

    async def check(request: Request) -> Response:
        body = CheckBody.model_validate(await _json(request))
        result = await run_in_threadpool(service.check, _bearer(request), body.gateway, body.ticket)
        return JSONResponse(result, headers={"Cache-Control": "no-store"})

    return [
        ("/v1/gateway-tickets", issue, ["POST"], "gateway-ticket"),
        ("/v1/gateway-tickets/check", check, ["POST"], "gateway-ticket-check"),
    ]


async def _json(request: Request) -> Any:
    raw = await request.body()
    if len(raw) > 4096:
        raise UsageError("request body too large")
    try:
        return json.loads(raw)
    except ValueError:
        raise UsageError("the request body is not JSON") from None


def _bearer(request: Request) -> str:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not value:
        raise PolicyDenied("send a bearer token")
    return value.strip()
