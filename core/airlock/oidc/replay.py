"""Single-use ``jti``: a token is accepted once, then refused as replayed until it expires.

:class:`ReplayCache` is the one plug point; :class:`InMemoryReplayCache` serves a single broker
process and the tests. A broker with replicas plugs a shared store (an SQL table with a unique
key on ``(issuer, jti)``), so that two replicas cannot both accept the same token.
"""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import Callable

from airlock.errors import InfrastructureUnavailable

__all__ = ["InMemoryReplayCache", "ReplayCache"]


class ReplayCache(abc.ABC):
    """Remembers which token ids were used. Implementations must be atomic: of two concurrent
    ``consume`` calls with the same ``(issuer, jti)``, exactly one returns True."""

    @abc.abstractmethod
    def consume(self, issuer: str, jti: str, expires_at: float) -> bool:
        """Record ``jti`` of ``issuer`` as used until ``expires_at`` (Unix time).

        Returns True when this is its first use, False when it was already used.
        """


class InMemoryReplayCache(ReplayCache):
    """A process-local replay cache: a dict under a lock, expired entries purged as it grows."""

    def __init__(
        self, *, max_entries: int = 1_000_000, clock: Callable[[], float] = time.time
    ) -> None:
        self._seen: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._max_entries = max_entries
        self._clock = clock
        self._next_purge = min(1024, max_entries)

    def consume(self, issuer: str, jti: str, expires_at: float) -> bool:
        """See :meth:`ReplayCache.consume`. Fails closed when full of unexpired entries."""
        key = (issuer, jti)
        with self._lock:
            now = self._clock()
            previous = self._seen.get(key)
            if previous is not None and previous > now:
                return False
            if len(self._seen) >= self._next_purge:
                self._purge(now)
            self._seen[key] = expires_at
            return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._seen)

    def _purge(self, now: float) -> None:
        self._seen = {k: exp for k, exp in self._seen.items() if exp > now}
        if len(self._seen) >= self._max_entries:
            raise InfrastructureUnavailable(
                "the replay cache is full of unexpired token ids; refusing new tokens",
                hint="raise the broker's replay cache size or use a shared state store",
            )
        self._next_purge = min(self._max_entries, max(1024, 2 * len(self._seen)))
