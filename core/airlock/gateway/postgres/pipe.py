"""The relay-phase protocol of one side of a PostgreSQL gateway connection (see
:mod:`.connection`): bytes go to the connection as they arrive, flow control to the other side."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["Pipe"]


class Pipe(asyncio.Protocol):
    """The relay-phase protocol of one side: bytes and end of stream go to the connection,
    flow control to the other side (``peer``). The stream protocol it replaces still learns of
    the connection's end, so the stream writer's ``wait_closed`` returns."""

    def __init__(
        self,
        on_data: Callable[[bytes], None],
        on_eof: Callable[[], None],
        previous: asyncio.BaseProtocol,
        peer: asyncio.Transport,
        may_resume_peer: Callable[[], bool] = lambda: True,
    ) -> None:
        self._on_data = on_data
        self._on_eof = on_eof
        self._previous = previous
        self._peer = peer
        self._may_resume_peer = may_resume_peer
        self.paused = False

    def data_received(self, data: bytes) -> None:
        self._on_data(data)

    def eof_received(self) -> bool | None:
        self._on_eof()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self._on_eof()
        finally:
            self._previous.connection_lost(exc)

    def pause_writing(self) -> None:
        self.paused = True
        self._peer.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        if self._may_resume_peer():
            self._peer.resume_reading()
