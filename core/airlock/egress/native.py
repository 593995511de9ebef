"""The compiled tunnel relay (``_relay.c``): admitted tunnels leave the event loop.

Once a CONNECT is admitted (rules, addresses, upstream connected, "200" sent), the tunnel's
two sockets are handed to one relay thread per proxy (C, its own epoll, never the GIL). It
reads the ClientHello (at most 64 KiB, within 10 s), and relays only if its SNI is the CONNECT
host (``parse_hello`` in C reads it as ``tls.py`` does; tests compare the two on the same
bytes); nothing reaches the upstream before that. It says when each tunnel ended, with the
bytes moved each way, the check's verdict and the SNI read, through an eventfd the loop
watches: the ``net.connect`` event keeps its SNI, byte counts and duration, and a refusal is
worded and recorded by ``connection.py`` exactly as the Python check words it. The relay works
on duplicates of the sockets, closed when the tunnel ends or is cancelled (the session ends),
except a refused tunnel's: those come back with the report and are closed once the refusal is
recorded (the client never hears of a refusal before the log has it). The loop's own
descriptors are closed at the hand-over.

Optional: built by ``python -m airlock.egress.build_relay`` (``./dev`` does), Linux only.
Without it, or with ``AIRLOCK_EGRESS_RELAY=python``, the pure-Python relay (``relay.py``)
runs, with the same outcomes and byte counts (tests compare the two).
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
from collections.abc import Callable
from enum import IntEnum
from pathlib import Path
from types import ModuleType
from typing import NamedTuple, cast

from airlock.egress.relay import Counts

__all__ = ["SOURCE", "Ended", "NativeRelay", "Verdict", "load"]

SOURCE = Path(__file__).with_name("_relay.c")
_VERSION = 2
_FLUSH_TIMEOUT = 10.0


class Verdict(IntEnum):
    """The relay thread's ClientHello check (``_relay.c`` V_*)."""

    NONE = 0  # not asked: the caller checked the ClientHello itself
    ADMITTED = 1
    NOT_TLS = 2  # not a TLS ClientHello, or a malformed one
    NO_SNI = 3
    SNI_DIFFERS = 4
    CLOSED = 5  # the client closed before its ClientHello was complete
    TIMED_OUT = 6
    FAILED = 7  # reading the ClientHello failed (``reason`` says how)


class Ended(NamedTuple):
    """How a relayed tunnel ended."""

    verdict: Verdict
    sni: str | None
    reason: str


# up, down, reason, verdict, sni, held: the sockets of a tunnel refused before relaying, still
# open for the caller to close once the refusal is recorded ((-1, -1): already closed)
_Report = tuple[int, int, str, int, str | None, tuple[int, int]]
_CLOSED: tuple[int, int] = (-1, -1)


def _held(report: _Report) -> list[int]:
    return [fd for fd in report[5] if fd >= 0]


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
        self._waiting: dict[int, asyncio.Future[_Report]] = {}
        loop.add_reader(self._fileno, self._finished)

    def open_tunnels(self) -> int:
        """Tunnels the relay thread holds now."""
        count: int = self._relay.open_tunnels()
        return count

    def _finished(self, keep: int | None = None) -> _Report | None:
        """Resolve the tunnels the relay thread ended; the report of ``keep``, if among them."""
        kept = None
        for handle, *fields in self._relay.finished():
            report = cast(_Report, tuple(fields))
            future = self._waiting.pop(handle, None)
            if handle == keep:
                kept = report
            elif future is not None and not future.done():
                future.set_result(report)
            else:  # nobody waits for it (cannot happen): its sockets are closed here
                for fd in _held(report):
                    os.close(fd)
        return kept

    async def relay(
        self,
        client: asyncio.BaseTransport,
        upstream: asyncio.BaseTransport,
        to_upstream: bytes | Callable[[], bytes],
        to_client: bytes,
        counts: Counts,
        expect: str | None = None,
        sni_optional: bool = False,
        hello_timeout: float = 10.0,
        held: list[int] | None = None,
    ) -> Ended:
        """Relay the tunnel between the sockets of two transports until it ends; what their
        streams read ahead goes first (``to_upstream``, ``to_client``; ``to_upstream`` may be a
        function, called once the client is paused, so nothing it sends meanwhile is lost).
        With ``expect``, ``to_upstream`` is the start of the ClientHello: the relay thread
        reads the rest and relays only if its SNI is ``expect`` (or absent, with
        ``sni_optional``). A tunnel refused before relaying leaves its sockets open in
        ``held``, for the caller to close once it recorded the refusal (without ``held``,
        they are closed here)."""
        hold: list[int] = [] if held is None else held
        try:
            return await self._relay_tunnel(
                client, upstream, to_upstream, to_client, counts, expect, sni_optional,
                hello_timeout, hold,
            )  # fmt: skip
        finally:
            if held is None:
                for fd in hold:
                    os.close(fd)

    async def _relay_tunnel(
        self,
        client: asyncio.BaseTransport,
        upstream: asyncio.BaseTransport,
        to_upstream: bytes | Callable[[], bytes],
        to_client: bytes,
        counts: Counts,
        expect: str | None,
        sni_optional: bool,
        hello_timeout: float,
        held: list[int],
    ) -> Ended:
        client_sock = client.get_extra_info("socket")
        upstream_sock = upstream.get_extra_info("socket")
        if client_sock is None or upstream_sock is None:
            raise OSError("no socket to relay")
        # uvloop's transports are not asyncio.Transport subclasses, hence the casts
        transports = [cast(asyncio.Transport, t) for t in (client, upstream)]
        if any(t.get_write_buffer_size() for t in transports):  # the 200 not sent yet
            async with asyncio.timeout(_FLUSH_TIMEOUT):
                while any(t.get_write_buffer_size() for t in transports):
                    await asyncio.sleep(0.005)
        for transport in transports:
            transport.pause_reading()  # the loop no longer touches these sockets
        if callable(to_upstream):  # what the client sent so far, the wait above included
            to_upstream = to_upstream()
        fds = (client_sock.fileno(), upstream_sock.fileno())
        if expect is None:
            handle: int = self._relay.add(*fds, to_upstream, to_client)
            counts.up += len(to_upstream)
            counts.down += len(to_client)
        else:  # counted by the relay thread once (if) the ClientHello passed
            timeout_ms = max(1, int(hello_timeout * 1000))
            handle = self._relay.add(*fds, to_upstream, to_client, expect, sni_optional, timeout_ms)
        # The relay holds duplicates: close the loop's own descriptors now. Paused, they would
        # stay in the loop's epoll set (uvloop removes them lazily), and each would wake the
        # loop once for nothing when the tunnel's first bytes arrive.
        for transport in transports:
            transport.close()
        future: asyncio.Future[_Report] = self._loop.create_future()
        self._waiting[handle] = future
        try:
            up, down, reason, verdict, sni, _ = report = await future
        except asyncio.CancelledError:
            self._waiting.pop(handle, None)
            moved: tuple[int, int] | None = self._relay.cancel(handle)  # dups closed on return
            late: _Report | None = None
            if moved is None and future.done() and not future.cancelled():
                late = future.result()  # it ended, reported, and then we were cancelled
            elif moved is None:  # it ended meanwhile: its report is not read yet
                late = self._finished(keep=handle)
            if late is not None:
                moved = late[0], late[1]
                held.extend(_held(late))
            if moved is not None:
                counts.up += moved[0]
                counts.down += moved[1]
            raise
        held.extend(_held(report))
        counts.up += up
        counts.down += down
        return Ended(Verdict(verdict), sni, reason)

    def close(self) -> None:
        """End every tunnel still relayed and stop the thread (the proxy is closing)."""
        self._loop.remove_reader(self._fileno)
        self._relay.close()
        for future in self._waiting.values():
            if not future.done():
                future.set_result((0, 0, "closed: the proxy stopped", Verdict.NONE, None, _CLOSED))
        self._waiting.clear()
