"""The event loop a gateway thread runs: uvloop when it is installed (the ``fast`` extra; about
half the CPU per relayed message of asyncio's own loop), else asyncio's. ``AIRLOCK_EVENT_LOOP=
asyncio`` forces asyncio's loop. Each gateway says which one it runs (:func:`new_loop`)."""

from __future__ import annotations

import asyncio
import os
from typing import Literal

__all__ = ["LoopName", "new_loop"]

LoopName = Literal["uvloop", "asyncio"]


def new_loop() -> tuple[asyncio.AbstractEventLoop, LoopName]:
    """A fresh event loop for a gateway's own thread, and which implementation it is."""
    if os.environ.get("AIRLOCK_EVENT_LOOP", "").strip().lower() != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop(), "uvloop"
    return asyncio.new_event_loop(), "asyncio"
