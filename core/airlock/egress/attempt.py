"""What one connection to the egress proxy amounts to: its ``net.connect`` data as it grows
(:class:`Attempt`), and a refusal with the status the client gets (:class:`Refused`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Attempt", "Refused"]


class Refused(Exception):
    """The attempt is refused: ``status`` (0: the connection is just closed), the deciding
    rule, and what to tell the client."""

    def __init__(self, status: int, rule_id: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.rule_id, self.reason = status, rule_id, reason


@dataclass
class Attempt:
    """One connection's ``net.connect`` event in the making."""

    started: float = field(default_factory=time.monotonic)
    data: dict[str, Any] = field(default_factory=dict)
    up: int = 0
    down: int = 0
    held: list[int] = field(default_factory=list)  # sockets to close once recorded

    def event(self) -> dict[str, Any]:
        duration = round((time.monotonic() - self.started) * 1000, 3)
        return {
            **self.data,
            "bytes_up": self.up,
            "bytes_down": self.down,
            "duration_ms": duration,
        }
