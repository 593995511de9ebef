"""Run the egress proxy: an asyncio server on 127.0.0.1 in a thread of its own.

    proxy = start_egress_proxy(policy.network, record=writer.append, approve=approve)
    proxy.host, proxy.port    # give the agent HTTPS_PROXY=http://host:port
    proxy.close()             # stop; open tunnels are closed and their net.connect recorded

``resolve`` replaces DNS (tests map names to 127.0.0.1 with it); by default the proxy asks the
system resolver, for names a rule allows only.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from concurrent.futures import Future

from airlock.egress.connection import Context, Resolve, handle_connection
from airlock.errors import InfrastructureUnavailable
from airlock.gate.interface import Approve, Record
from airlock.policy.network import EgressRules, NetworkPolicy

__all__ = ["EgressProxy", "EgressProxyError", "start_egress_proxy"]

_START_TIMEOUT = 10.0


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


class EgressProxy:
    """A running egress proxy. ``host``/``port`` is its listener; :meth:`close` stops it."""

    def __init__(
        self,
        rules: EgressRules,
        loop: asyncio.AbstractEventLoop,
        thread: threading.Thread,
        server: asyncio.Server,
        tasks: set[asyncio.Task[None]],
    ) -> None:
        self.rules = rules
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
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()


def start_egress_proxy(
    network: NetworkPolicy,
    *,
    record: Record,
    approve: Approve | None,
    listen: tuple[str, int] = ("127.0.0.1", 0),
    resolve: Resolve | None = None,
) -> EgressProxy:
    """Start the proxy for ``network`` in a background thread; return once it accepts."""
    rules = network.compiled()
    ctx = Context(rules, record, approve, resolve or _system_resolve)
    loop = asyncio.new_event_loop()
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
    return EgressProxy(rules, loop, thread, server, tasks)
