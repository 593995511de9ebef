"""Session tickets: what an agent presents to a gateway instead of the upstream credential.

A :class:`Ticket` is 32 random bytes (URL-safe base64), bound to one session id and one gateway
name. It is useless anywhere else: the upstream never sees it, and the gateway compares it in
constant time. Its ``repr`` never shows the value.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field

__all__ = ["Ticket"]


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
