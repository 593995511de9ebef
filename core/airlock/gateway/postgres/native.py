"""How a relayed connection's bytes move: asyncio's transports, or the compiled I/O loop.

Once a client is logged in, its two sockets can be handed to one I/O thread per gateway
(``_loop.c``: its own epoll, the GIL only while it hands bytes to Python). That thread calls the
connection's sans-I/O relay with what each side sent, under the connection's lock, and the relay's
answer goes out on that same thread: no event-loop turn, transport or callback per message. The
event loop keeps what waits (approvals, ticket checks) and the connection's end. Judging,
recording before sending, masking and holds are the same code either way (tests run both).

Optional: built by ``python -m airlock.gateway.postgres.build_rows`` (``./dev`` does), Linux only.
Without it, with TLS to the upstream, or with ``AIRLOCK_PG_RELAY=python``, the asyncio transports
move the bytes (:class:`TransportWires`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, Protocol

__all__ = [
    "IO_PATH",
    "SOURCE",
    "LoopWires",
    "TransportWires",
    "Wires",
    "load",
    "native_ready",
]

SOURCE = Path(__file__).with_name("_loop.c")
_VERSION = 1
CLIENT, UPSTREAM = 0, 1


def load() -> ModuleType | None:
    """The compiled I/O loop, or ``None``: not built, stale, not Linux, or turned off."""
    if os.environ.get("AIRLOCK_PG_RELAY", "").strip().lower() == "python":
        return None
    if not sys.platform.startswith("linux"):
        return None
    try:
        module = importlib.import_module("airlock.gateway.postgres._loop")
    except ImportError:
        return None
    return module if getattr(module, "VERSION", None) == _VERSION else None


IO_PATH: Literal["compiled", "python"] = "python" if load() is None else "compiled"


class Wires(Protocol):
    """Where a connection's relay sends bytes, and how it pauses reading its client."""

    def to_upstream(self, data: bytes) -> None: ...
    def to_client(self, data: bytes) -> None: ...
    def pause_client(self) -> None: ...
    def resume_client(self) -> None: ...
    def call(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn`` on the event loop's thread (now, when already there)."""


class TransportWires:
    """The asyncio transports (everything runs on the event loop's thread)."""

    def __init__(
        self,
        client: asyncio.Transport,
        upstream: asyncio.Transport,
        may_resume: Callable[[], bool],
    ) -> None:
        self.client = client
        self.upstream = upstream
        self._may_resume = may_resume

    def to_upstream(self, data: bytes) -> None:
        self.upstream.write(data)

    def to_client(self, data: bytes) -> None:
        self.client.write(data)

    def pause_client(self) -> None:
        self.client.pause_reading()

    def resume_client(self) -> None:
        if self._may_resume():
            self.client.resume_reading()

    def call(self, fn: Callable[..., None], *args: Any) -> None:
        fn(*args)


class LoopWires:
    """One connection in the compiled I/O loop (see the module's text). ``on_data(side, data)``
    and ``on_end(side)`` are called from the loop's thread; ``on_end`` is then run on the event
    loop's thread (a send that fails reports the same way)."""

    def __init__(
        self,
        io: Any,
        loop: asyncio.AbstractEventLoop,
        client: asyncio.Transport,
        upstream: asyncio.Transport,
        on_data: Callable[[int, bytes], None],
        on_end: Callable[[int], None],
    ) -> None:
        self._io = io
        self._loop = loop
        self._client = client
        self._upstream = upstream
        self._on_end = on_end
        sockets = [t.get_extra_info("socket") for t in (client, upstream)]
        self.handle: int | None = io.add(  # OSError (no fd left to duplicate): nothing changed
            sockets[0].fileno(), sockets[1].fileno(), on_data, self._ended
        )
        client.pause_reading()  # from here on the event loop never touches these sockets
        upstream.pause_reading()

    def _ended(self, side: int, reason: str) -> None:
        self.call(self._on_end, side)

    def start(self) -> None:
        """Start reading both sides (``add`` leaves them paused)."""
        self._io.pause(self.handle, CLIENT, False)
        self._io.pause(self.handle, UPSTREAM, False)

    def to_upstream(self, data: bytes) -> None:
        if not self._io.send(self.handle, UPSTREAM, data):
            self.call(self._on_end, UPSTREAM)

    def to_client(self, data: bytes) -> None:
        if not self._io.send(self.handle, CLIENT, data):
            self.call(self._on_end, CLIENT)

    def pause_client(self) -> None:
        self._io.pause(self.handle, CLIENT, True)

    def resume_client(self) -> None:
        self._io.pause(self.handle, CLIENT, False)

    def call(self, fn: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop is closed: the gateway is gone
            self._loop.call_soon_threadsafe(fn, *args)

    def stop(self) -> None:
        """Take the connection out of the loop; what it had not sent yet goes to the transports
        (their close sends it)."""
        handle, self.handle = self.handle, None
        left = None if handle is None else self._io.remove(handle)
        if left is not None:
            to_client, to_upstream = left
            if to_client:
                self._client.write(to_client)
            if to_upstream:
                self._upstream.write(to_upstream)


def native_ready(client: asyncio.Transport, upstream: asyncio.Transport) -> bool:
    """Whether this connection's sockets can go to the compiled loop: plain sockets on both
    sides (no TLS object between), and nothing left in the transports' write buffers."""
    for transport in (client, upstream):
        if transport.get_extra_info("ssl_object") is not None:
            return False
        if transport.get_extra_info("socket") is None or transport.get_write_buffer_size():
            return False
    return True
