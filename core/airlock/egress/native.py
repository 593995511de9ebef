"""The compiled tunnel relay (``_relay.c``): admitted tunnels leave the event loop.

Once a CONNECT is admitted and its ClientHello's SNI checked, the tunnel's two sockets are
handed to one relay thread per proxy (C, its own epoll, never the GIL), which moves the bytes
and says when each tunnel ended, with the bytes moved each way, through an eventfd the loop
watches: the ``net.connect`` event keeps its byte counts and duration. Only the sockets of
admitted tunnels are ever handed over; the relay works on duplicates of them, closed when the
tunnel ends or is cancelled (the session ends), and the transports close the originals.

Optional: built by ``python -m airlock.egress.build_relay`` (``./dev`` does), Linux only.
Without it, or with ``AIRLOCK_EGRESS_RELAY=python``, the pure-Python relay (``relay.py``)
runs, with the same outcomes and byte counts (tests compare the two).
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import cast

from airlock.egress.relay import Counts, take_buffer

__all__ = ["SOURCE", "NativeRelay", "load"]

SOURCE = Path(__file__).with_name("_relay.c")
_VERSION = 1
_FLUSH_TIMEOUT = 10.0


def current(module: ModuleType) -> bool:
    """Whether ``module`` is a build of the ``_relay.c`` this code expects."""
    return getattr(module, "VERSION", None) == _VERSION


def load() -> ModuleType | None:
    """The compiled relay, or ``None``: not built, stale, not Linux, or turned off."""
    if os.environ.get("AIRLOCK_EGRESS_RELAY", "").strip().lower() == "python":
        return None
    if not sys.platform.startswith("linux"):
        return None
    try:
        module = importlib.import_module("airlock.egress._relay")
    except ImportError:
        return None
    return module if current(module) else None


class NativeRelay:
    """One compiled relay thread for the tunnels of one proxy's event loop."""

    def __init__(self, module: ModuleType, loop: asyncio.AbstractEventLoop) -> None:
        self._relay = module.Relay()
        self._loop = loop
        self._fileno: int = self._relay.fileno()
        self._waiting: dict[int, asyncio.Future[tuple[int, int]]] = {}
        loop.add_reader(self._fileno, self._finished)

    def open_tunnels(self) -> int:
        """Tunnels the relay thread holds now."""
        count: int = self._relay.open_tunnels()
        return count

    def _finished(self, keep: int | None = None) -> tuple[int, int] | None:
        """Resolve the tunnels the relay thread ended; the counts of ``keep``, if among them."""
        kept = None
        for handle, up, down, _reason in self._relay.finished():
            if handle == keep:
                kept = (up, down)
            future = self._waiting.pop(handle, None)
            if future is not None and not future.done():
                future.set_result((up, down))
        return kept

    async def relay(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        upstream: asyncio.StreamWriter,
        first: bytes,
        counts: Counts,
    ) -> None:
        """Relay the tunnel until it ends, ``first`` going upstream before anything else."""
        client_sock = writer.get_extra_info("socket")
        upstream_sock = upstream.get_extra_info("socket")
        if client_sock is None or upstream_sock is None:
            raise OSError("no socket to relay")
        # uvloop's transports are not asyncio.Transport subclasses, hence the casts
        transports = [cast(asyncio.Transport, w.transport) for w in (writer, upstream)]
        async with asyncio.timeout(_FLUSH_TIMEOUT):
            while any(t.get_write_buffer_size() for t in transports):  # the 200 not sent yet
                await asyncio.sleep(0.005)
        for transport in transports:
            transport.pause_reading()  # the loop no longer touches these sockets
        to_upstream = first + take_buffer(reader)
        to_client = take_buffer(up_reader)
        handle: int = self._relay.add(
            client_sock.fileno(), upstream_sock.fileno(), to_upstream, to_client
        )
        counts.up += len(to_upstream)
        counts.down += len(to_client)
        future: asyncio.Future[tuple[int, int]] = self._loop.create_future()
        self._waiting[handle] = future
        try:
            up, down = await future
        except asyncio.CancelledError:
            self._waiting.pop(handle, None)
            moved = self._relay.cancel(handle)  # its duplicates are closed on return
            if moved is None:  # it ended meanwhile: its report is not read yet
                moved = self._finished(keep=handle)
            if moved is not None:
                counts.up += moved[0]
                counts.down += moved[1]
            raise
        counts.up += up
        counts.down += down

    def close(self) -> None:
        """End every tunnel still relayed and stop the thread (the proxy is closing)."""
        self._loop.remove_reader(self._fileno)
        self._relay.close()
        for future in self._waiting.values():
            if not future.done():
                future.set_result((0, 0))
        self._waiting.clear()
