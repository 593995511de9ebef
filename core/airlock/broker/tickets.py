"""Central mode: tickets for gateways that run next to the broker, off the runner.

A job asks for a ticket to a named central gateway with its job token; it gets one only when
the trust rule that admitted its token grants a ticket grant for that gateway (see
:mod:`airlock.broker.ticket_grants`). The gateway, which never sees job tokens or OIDC tokens,
checks each ticket a client presents with the broker, authenticating with its own token
(configured as a SHA-256 in ``central_gateways:``). Tickets are leases: stored hashed, bound to
one gateway and one job, with a TTL; revoking the job ends them at once.

    POST /v1/gateway-tickets        Bearer <job token>      {gateway}          → {ticket, …}
    POST /v1/gateway-tickets/check  Bearer <gateway token>  {gateway, ticket}  → {subject} | 403
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from airlock.broker.requests import bearer, read_json
from airlock.broker.service import Broker
from airlock.errors import PolicyDenied

__all__ = ["MAX_TICKET_BODY", "TicketService", "ticket_routes"]

MAX_TICKET_BODY = 4096
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

    def issue(self, job_token: str, gateway: str) -> dict[str, Any]:
        credential = self._broker.issue_ticket(job_token, gateway)
        (ticket,) = credential.values.values()
        return {
            "ticket": ticket,
            "gateway": gateway,
            "lease_id": credential.lease_id,
            "expires_at": credential.expires_at.timestamp(),
        }

    def check(self, gateway_token: str, gateway: str, ticket: str) -> dict[str, Any]:
        central = self._broker.config.central_gateways.get(gateway)
        presented = hashlib.sha256(gateway_token.encode()).hexdigest()
        if central is None or not hmac.compare_digest(presented, central.token_sha256):
            raise PolicyDenied("this gateway is not known to the broker")
        found = self._broker.check_ticket(gateway, ticket)
        if found is None:
            raise PolicyDenied("ticket refused")
        subject, expires_at = found
        return {"subject": subject, "expires_at": expires_at}


def ticket_routes(broker: Broker) -> list[tuple[str, Handler, list[str], str]]:
    """``(path, handler, methods, name)`` for the broker app's route list."""
    service = TicketService(broker)

    async def issue(request: Request) -> Response:
        token = bearer(request)
        body = IssueBody.model_validate(await read_json(request, MAX_TICKET_BODY))
        result = await run_in_threadpool(service.issue, token, body.gateway)
        return JSONResponse(result, status_code=201, headers={"Cache-Control": "no-store"})

    async def check(request: Request) -> Response:
        token = bearer(request)
        body = CheckBody.model_validate(await read_json(request, MAX_TICKET_BODY))
        result = await run_in_threadpool(service.check, token, body.gateway, body.ticket)
        return JSONResponse(result, headers={"Cache-Control": "no-store"})

    return [
        ("/v1/gateway-tickets", issue, ["POST"], "gateway-ticket"),
        ("/v1/gateway-tickets/check", check, ["POST"], "gateway-ticket-check"),
    ]
