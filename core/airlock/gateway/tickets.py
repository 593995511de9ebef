"""Session tickets: what an agent presents to a gateway instead of the upstream credential.

A :class:`Ticket` is 32 random bytes (URL-safe base64), bound to one session id and one gateway
name. It is useless anywhere else: the upstream never sees it, and the gateway compares it in
constant time. Its ``repr`` never shows the value.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from typing import Protocol

import httpx

from airlock.brokerclient import BrokerClient
from airlock.errors import AirlockError

__all__ = ["RECHECK_SECONDS", "BrokerTicket", "Ticket", "TicketCheck"]

RECHECK_SECONDS = 5.0  # how long a gateway trusts the broker's "yes" for a ticket


class TicketCheck(Protocol):
    """What a gateway needs of a ticket: whose it is, and whether a presented value is it."""

    @property
    def session_id(self) -> str: ...

    @property
    def gateway(self) -> str: ...

    def check(self, presented: str | bytes) -> bool: ...


@dataclass(frozen=True)
class Ticket:
    """A random token for one session and one gateway. ``value`` is the secret."""

    session_id: str
    gateway: str
    value: str = field(repr=False)

    @classmethod
    def issue(cls, session_id: str, gateway: str) -> Ticket:
        """A fresh ticket for ``gateway`` in session ``session_id``."""
        return cls(session_id, gateway, secrets.token_urlsafe(32))

    def check(self, presented: str | bytes) -> bool:
        """True when ``presented`` is this ticket's value (constant-time comparison)."""
        if isinstance(presented, str):
            presented = presented.encode("utf-8", "replace")
        return hmac.compare_digest(presented, self.value.encode("ascii"))


@dataclass
class BrokerTicket:
    """Central mode: a ticket is valid when the broker says so (it issued it to a job, for this
    gateway, it has not expired, and neither it nor its job was revoked). An accepted ticket is
    remembered for :data:`RECHECK_SECONDS` at most, so a revoke at the broker ends it within
    that time here. Unreachable broker: refused."""

    session_id: str
    gateway: str
    broker_url: str
    gateway_token: str = field(repr=False)
    timeout: float = 5.0
    _accepted: dict[str, float] = field(default_factory=dict, repr=False)

    def check(self, presented: str | bytes) -> bool:
        value = presented.decode("utf-8", "replace") if isinstance(presented, bytes) else presented
        key = hashlib.sha256(value.encode()).hexdigest()
        now = time.time()
        if self._accepted.get(key, 0.0) > now:
            return True
        client = BrokerClient(
            self.broker_url, http=httpx.Client(timeout=self.timeout, follow_redirects=False)
        )
        try:
            answer = client.check_ticket(self.gateway_token, self.gateway, value)
            expires_at = float(answer.get("expires_at", now))
        except (AirlockError, TypeError, ValueError):
            return False  # refused, unreachable or unreadable: fail closed
        finally:
            client.close()
        self._accepted[key] = min(expires_at, now + RECHECK_SECONDS)
        return True
