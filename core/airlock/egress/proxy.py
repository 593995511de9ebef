"""Run the egress proxy: an asyncio server on 127.0.0.1 in a thread of its own.

    proxy = start_egress_proxy(policy.network, record=writer.append, approve=approve)
    proxy.host, proxy.port    # give the agent HTTPS_PROXY=http://host:port
    proxy.close()             # stop; open tunnels are closed and their net.connect recorded

``resolve`` replaces DNS (tests map names to 127.0.0.1 with it); by default the proxy asks the
system resolver, for names a rule allows only. Answers are kept for ``RESOLVE_TTL`` seconds
(the system resolver does not say a record's TTL), per proxy, so one session's burst of
connections to a host costs one lookup; failures are not kept. Each connection still checks
the answer (local addresses), so a kept answer is judged exactly as a fresh one.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

from airlock.egress.connection import Context, Resolve, handle_connection
from airlock.egress.native import NativeRelay, load
from airlock.errors import InfrastructureUnavailable
from airlock.gate.interface import Approve, Record
from airlock.policy.network import EgressRules, NetworkPolicy

__all__ = ["RESOLVE_TTL", "CachedResolve", "EgressProxy", "EgressProxyError", "start_egress_proxy"]

_START_TIMEOUT = 10.0
RESOLVE_TTL = 30.0


class EgressProxyError(InfrastructureUnavailable):
    """The egress proxy could not start (fail closed: the agent would have no way out)."""

    default_hint = "check that 127.0.0.1 has a free port (or the listen address given)"


async def _system_resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in seen:
            seen.append(address)
    return seen


class CachedResolve:
    """``resolve`` with its answers kept ``ttl`` seconds, per (host, port); errors not kept.
    Used from the proxy's one event loop thread only."""

    def __init__(
        self, resolve: Resolve, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._resolve, self._ttl, self._clock = resolve, ttl, clock
        self._kept: dict[tuple[str, int], tuple[float, list[str]]] = {}

    async def __call__(self, host: str, port: int) -> list[str]:
        now = self._clock()
        kept = self._kept.get((host, port))
        if kept is not None and kept[0] > now:
            return list(kept[1])
        found = await self._resolve(host, port)
        if found:
            if len(self._kept) >= 4096:  # a bound, not a policy: start over
                self._kept.clear()
            self._kept[(host, port)] = (now + self._ttl, list(found))
        return found


class EgressProxy:
    """A running egress proxy. ``host``/``port`` is its listener; :meth:`close` stops it."""

    def __init__(
        self,
        rules: EgressRules,
        loop: asyncio.AbstractEventLoop,
        thread: threading.Thread,
        server: asyncio.Server,
        tasks: set[asyncio.Task[None]],
        native: NativeRelay | None = None,
    ) -> None:
        self.rules = rules
        self.native = native  # the compiled tunnel relay, None: tunnels relayed in Python
        self._loop = loop
        self._thread = thread
        self._server = server
        self._tasks = tasks
        self.host, self.port = server.sockets[0].getsockname()[:2]

    @property
    def url(self) -> str:
        """``http://host:port``: the value of HTTPS_PROXY / HTTP_PROXY for the agent."""
        return f"http://{self.host}:{self.port}"

    def close(self, timeout: float = 10.0) -> None:
        """Stop listening; close open tunnels (each records its ``net.connect``); end the thread."""
        if not self._thread.is_alive():
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        try:
            future.result(timeout)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)

    async def _shutdown(self) -> None:
        self._server.close()
        # A handler joins ``_tasks`` when it first runs: one accepted just before the close may
        # not have yet. Let such handlers start, then cancel until none is left, so every
        # connection is recorded, and none reaches the compiled relay after it has closed.
        await asyncio.sleep(0)
        while self._tasks:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await asyncio.sleep(0)
        if self.native is not None:
            self.native.close()
        await self._server.wait_closed()


def _new_event_loop() -> asyncio.AbstractEventLoop:
    """With the compiled relay: uvloop's event loop where it is installed (airlock-ci[fast]),
    fewer µs per loop turn, which is most of a short tunnel's cost; asyncio's otherwise, or
    with ``AIRLOCK_EGRESS_LOOP=asyncio``. (The pure-Python relay needs asyncio's transports.)"""
    if os.environ.get("AIRLOCK_EGRESS_LOOP", "").strip().lower() != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def start_egress_proxy(
    network: NetworkPolicy,
    *,
    record: Record,
    approve: Approve | None,
    listen: tuple[str, int] = ("127.0.0.1", 0),
    resolve: Resolve | None = None,
    resolve_ttl: float = RESOLVE_TTL,
) -> EgressProxy:
    """Start the proxy for ``network`` in a background thread; return once it accepts.
    ``resolve_ttl`` seconds an answer is kept (0: ask every time)."""
    rules = network.compiled()
    lookup = resolve or _system_resolve
    module = load()
    loop = _new_event_loop() if module is not None else asyncio.new_event_loop()
    native = NativeRelay(module, loop) if module is not None else None
    ctx = Context(
        rules,
        record,
        approve,
        CachedResolve(lookup, resolve_ttl) if resolve_ttl else lookup,
        native,
    )
    tasks: set[asyncio.Task[None]] = set()
    started: Future[asyncio.Server] = Future()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handle_connection(ctx, reader, writer)
        except asyncio.CancelledError:
            pass
        finally:
            tasks.discard(task)

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            server = loop.run_until_complete(
                asyncio.start_server(serve, listen[0], listen[1], limit=256 * 1024, backlog=512)
            )
        except OSError as exc:
            started.set_exception(
                EgressProxyError(
                    f"the egress proxy cannot listen on {listen[0]}:{listen[1]}: {exc.strerror}"
                )
            )
            if native is not None:
                native.close()
            loop.close()
            return
        started.set_result(server)
        loop.run_forever()
        loop.close()

    thread = threading.Thread(target=run, name="airlock-egress", daemon=True)
    thread.start()
    try:
        server = started.result(_START_TIMEOUT)
    except TimeoutError:
        raise EgressProxyError("the egress proxy did not start within 10 s") from None
    return EgressProxy(rules, loop, thread, server, tasks, native)
