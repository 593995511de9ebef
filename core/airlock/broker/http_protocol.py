"""The broker's HTTP/1.1 protocol: uvicorn's httptools protocol with a bounded request head.

llhttp sets no limit on a request line or header section and uvicorn's httptools protocol adds
none, so one unauthenticated connection sending an endless header could grow the broker by any
amount (h11 caps it at 16 KiB; httptools is kept for its CPU cost). Here the bytes received
while a request head is incomplete are counted, and past :data:`MAX_HEAD` the connection gets
``431`` and is closed before the rest is parsed.
"""

from __future__ import annotations

import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["MAX_HEAD", "BoundedHttpToolsProtocol"]

# A read is at most 256 KiB: a first read with a small head and a large body start stays under.
MAX_HEAD = 1024 * 1024
_REFUSAL = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: 33\r\n"
    b"connection: close\r\n\r\n"
    b"request line or headers too large"
)
log = logging.getLogger("airlock.broker")


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` refusing a request head over :data:`MAX_HEAD` bytes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD:
                log.warning("request refused: head over %d bytes", MAX_HEAD)
                self._in_head = False
                self.transport.write(_REFUSAL)
                self.transport.close()
                return
        super().data_received(data)

    def on_message_begin(self) -> None:
        self._in_head, self._head_bytes = True, 0
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_head, self._head_bytes = True, 0  # the next request's head starts now
        super().on_message_complete()
