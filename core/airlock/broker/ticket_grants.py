"""Central-gateway tickets as grants: issued under the trust policy, leased, revoked with the job.

A ticket grant names a central gateway::

    grants:
      proddb-ticket: {provider: central-gateway, gateway: proddb, ttl: 15m}
    rules:
      - {id: api-main, ..., grants: [llm, proddb-ticket]}

A job gets a ticket for ``proddb`` only when the rule that admitted its token grants a ticket
grant for ``proddb`` (at the exchange, or later through ``POST /v1/gateway-tickets`` within the
ceiling the exchange recorded). Each ticket is a lease in the ledger with the grant's TTL (at
most the gateway's ``ticket_ttl``); revoking the job or the lease deletes it, and ``/check``
accepts a ticket only while its lease and its job are live.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field

from airlock.broker.state import JOBS, LEASES, token_digest
from airlock.errors import ConfigError, InfrastructureUnavailable
from airlock.policy.broker_config import CentralGateway
from airlock.providers.interface import (
    CredentialProvider,
    IssuedCredential,
    IssueRequest,
    TtlLimits,
)

__all__ = ["TICKETS", "TICKET_PROVIDER", "TicketProvider", "ticket_variable"]

TICKET_PROVIDER = "central-gateway"

_META = sa.MetaData()
TICKETS = sa.Table(
    "airlock_tickets",
    _META,
    sa.Column("ticket_sha", sa.String(64), primary_key=True),
    sa.Column("gateway", sa.String(64), nullable=False),
    sa.Column("lease_id", sa.String(64), nullable=False, index=True),
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
)


class TicketSettings(BaseModel):
    """A ticket grant's own key: the central gateway it admits to."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    gateway: str = Field(min_length=1, max_length=64)


class _NoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def ticket_variable(gateway: str) -> str:
    """The variable a ticket is exported as: ``AIRLOCK_TICKET_<GATEWAY>``."""
    return "AIRLOCK_TICKET_" + "".join(c if c.isalnum() else "_" for c in gateway.upper())


class TicketProvider(CredentialProvider):
    """Issues tickets for the broker's central gateways into the broker's own database."""

    name: ClassVar[str] = TICKET_PROVIDER
    settings_model: ClassVar[type[BaseModel]] = TicketSettings
    config_model: ClassVar[type[BaseModel]] = _NoConfig
    ttl_limits: ClassVar[TtlLimits] = TtlLimits(minimum=60, maximum=3600)

    def __init__(
        self, gateways: Mapping[str, CentralGateway], engine: sa.Engine | None = None
    ) -> None:
        super().__init__(_NoConfig())
        self._gateways = dict(gateways)
        self._engine = engine
        if engine is not None:
            _META.create_all(engine)

    def validate_grant(self, settings: Mapping[str, Any]) -> BaseModel:
        parsed = super().validate_grant(settings)
        assert isinstance(parsed, TicketSettings)
        if parsed.gateway not in self._gateways:
            raise ConfigError(
                f"a {TICKET_PROVIDER} grant names gateway {parsed.gateway!r}, which is not "
                "under central_gateways:",
                hint="add the gateway under central_gateways:, or fix the grant's gateway",
            )
        return parsed

    def gateway_of(self, settings: Mapping[str, Any]) -> str:
        """The gateway a ticket grant admits to."""
        return str(settings.get("gateway", ""))

    def issue(self, request: IssueRequest) -> IssuedCredential:
        gateway = self.gateway_of(request.settings)
        central = self._gateways[gateway]
        ttl = max(60, min(request.ttl_seconds, int(central.ticket_ttl)))
        ticket = secrets.token_urlsafe(32)
        expires = time.time() + ttl
        with self._db().begin() as conn:
            conn.execute(sa.delete(TICKETS).where(TICKETS.c.expires_at < time.time()))
            conn.execute(
                sa.insert(TICKETS).values(
                    ticket_sha=token_digest(ticket),
                    gateway=gateway,
                    lease_id=request.lease_id,
                    expires_at=expires,
                )
            )
        return IssuedCredential(
            lease_id=request.lease_id,
            grant_name=request.grant_name,
            provider=TICKET_PROVIDER,
            values={ticket_variable(gateway): ticket},
            expires_at=datetime.fromtimestamp(expires, UTC),
            revoke_handle={"gateway": gateway},
        )

    def revoke(self, lease_id: str, revoke_handle: Mapping[str, str]) -> None:
        with self._db().begin() as conn:
            conn.execute(sa.delete(TICKETS).where(TICKETS.c.lease_id == lease_id))

    def check(self, gateway: str, ticket: str) -> tuple[dict[str, Any], float] | None:
        """(subject, expiry) of a live ticket for ``gateway``: its lease and its job unrevoked."""
        now = time.time()
        query = (
            sa.select(LEASES.c.subject, TICKETS.c.expires_at)
            .select_from(
                TICKETS.join(LEASES, LEASES.c.lease_id == TICKETS.c.lease_id).join(
                    JOBS, JOBS.c.job_digest == LEASES.c.job_digest
                )
            )
            .where(
                TICKETS.c.ticket_sha == token_digest(ticket),
                TICKETS.c.gateway == gateway,
                TICKETS.c.expires_at > now,
                LEASES.c.revoked_at.is_(None),
                JOBS.c.revoked_at.is_(None),
                JOBS.c.expires_at > now,
            )
        )
        with self._db().connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        return json.loads(row.subject), float(row.expires_at)

    def _db(self) -> sa.Engine:
        if self._engine is None:
            raise InfrastructureUnavailable("the ticket provider has no state store attached")
        return self._engine
