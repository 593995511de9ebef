"""Session tickets: what an agent presents to a gateway instead of the upstream credential.

A :class:`Ticket` is 32 random bytes (URL-safe base64), bound to one session id and one gateway
name. It is useless anywhere else: the upstream never sees it, and the gateway compares it in
constant time. Its ``repr`` never shows the value.

Gateways check a presented ticket with :func:`check_ticket`, which never blocks their event
loop: a local ticket is a constant-time compare; a central one (:class:`BrokerTicket`) is
answered from a small cache or by an asynchronous call to the broker.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import ssl
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Protocol

import httpx

__all__ = ["CACHE_SIZE", "RECHECK_SECONDS", "BrokerTicket", "Ticket", "TicketCheck", "check_ticket"]

RECHECK_SECONDS = 5.0  # how long a gateway trusts the broker's "yes" for a ticket
CACHE_SIZE = 1024  # accepted tickets remembered at most (the oldest answer is dropped first)


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
    remembered for :data:`RECHECK_SECONDS` at most (and :data:`CACHE_SIZE` tickets at most), so
    a revoke at the broker ends it within that time here; ``fresh`` checks skip the cache.
    Gateways with long-lived connections (PostgreSQL) ask again every ``recheck`` seconds.
    Unreachable or slow broker (past ``timeout``): refused."""

    session_id: str
    gateway: str
    broker_url: str
    gateway_token: str = field(repr=False)
    timeout: float = 5.0
    recheck: float = RECHECK_SECONDS  # how often a long-lived connection's ticket is asked again
    _accepted: dict[str, float] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # Made once: loading the CA bundle costs ~30 ms of CPU, a client ~3 ms (proxy settings):
    # too much for every check in the loop that serves the clients. One client per event loop,
    # no keep-alive (a pooled connection the broker closed would turn into a refusal).
    _tls: ssl.SSLContext = field(default_factory=ssl.create_default_context, repr=False)
    _clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = field(
        default_factory=weakref.WeakKeyDictionary, repr=False
    )

    def check(self, presented: str | bytes, *, fresh: bool = False) -> bool:
        """Blocking check (for callers outside an event loop); gateways use :meth:`check_async`."""
        value, key = self._key(presented)
        if not fresh and self._cached(key):
            return True
        try:
            with httpx.Client(timeout=self.timeout, verify=self._tls) as client:
                response = client.post(self._url, json=self._body(value), headers=self._headers)
        except httpx.HTTPError:
            return False  # fail closed
        return self._answer(key, response)

    async def check_async(self, presented: str | bytes, *, fresh: bool = False) -> bool:
        """The same check without blocking the event loop that serves the other clients."""
        value, key = self._key(presented)
        if not fresh and self._cached(key):
            return True
        try:
            response = await self._client().post(
                self._url, json=self._body(value), headers=self._headers
            )
        except httpx.HTTPError:
            return False  # fail closed
        return self._answer(key, response)

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._clients.get(loop)
            if client is None or client.is_closed:
                limits = httpx.Limits(max_keepalive_connections=0)
                client = httpx.AsyncClient(timeout=self.timeout, verify=self._tls, limits=limits)
                self._clients[loop] = client
            return client

    @property
    def _url(self) -> str:
        return self.broker_url.rstrip("/") + "/v1/gateway-tickets/check"

    @property
    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.gateway_token}"}

    def _body(self, value: str) -> dict[str, str]:
        return {"gateway": self.gateway, "ticket": value}

    @staticmethod
    def _key(presented: str | bytes) -> tuple[str, str]:
        value = presented.decode("utf-8", "replace") if isinstance(presented, bytes) else presented
        return value, hashlib.sha256(value.encode()).hexdigest()

    def _cached(self, key: str) -> bool:
        with self._lock:
            return self._accepted.get(key, 0.0) > time.time()

    def _answer(self, key: str, response: httpx.Response) -> bool:
        now = time.time()
        with self._lock:
            if response.status_code != 200:
                self._accepted.pop(key, None)
                return False
            try:
                expires = float(response.json().get("expires_at", now))
            except (ValueError, TypeError, AttributeError):
                return False
            self._accepted.pop(key, None)  # re-inserted last: the dict keeps answer order
            while len(self._accepted) >= CACHE_SIZE:
                del self._accepted[next(iter(self._accepted))]
            self._accepted[key] = min(expires, now + RECHECK_SECONDS)
            return True


async def check_ticket(ticket: TicketCheck, presented: str | bytes, *, fresh: bool = False) -> bool:
    """Whether ``presented`` is a valid ticket, without blocking the running event loop.

    ``fresh``: ask the broker even when a recent answer is cached (before sending an operation
    that was held for approval: the job may have been revoked meanwhile)."""
    if isinstance(ticket, Ticket):  # local: a constant-time compare
        return ticket.check(presented)
    if isinstance(ticket, BrokerTicket):
        return await ticket.check_async(presented, fresh=fresh)
    # another implementation: its check may block (HTTP), so never in the loop's thread
    return await asyncio.to_thread(ticket.check, presented)
