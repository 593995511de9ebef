"""What the upstream client (``client.py``) sends, and how it fails: the request with its
headers (what a credential injector reads and sets), the timeouts, the errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = [
    "ConnectError",
    "ConnectTimeout",
    "Headers",
    "PoolTimeout",
    "ReadError",
    "ReadTimeout",
    "RemoteProtocolError",
    "Request",
    "Timeouts",
    "UpstreamError",
    "UpstreamTimeout",
    "WriteError",
    "WriteTimeout",
]

_WITH_LENGTH = frozenset({"POST", "PUT", "PATCH"})  # an empty body says Content-Length: 0


class UpstreamError(Exception):
    """The upstream could not be reached, or broke the exchange."""


class UpstreamTimeout(UpstreamError):
    """A timeout (see :class:`Timeouts`) ran out."""


class ConnectError(UpstreamError): ...


class ReadError(UpstreamError): ...


class WriteError(UpstreamError): ...


class RemoteProtocolError(UpstreamError): ...


class ConnectTimeout(UpstreamTimeout): ...


class ReadTimeout(UpstreamTimeout): ...


class WriteTimeout(UpstreamTimeout): ...


class PoolTimeout(UpstreamTimeout): ...


@dataclass(frozen=True)
class Timeouts:
    """Seconds: to connect, to wait for each read and each write, to wait for a free slot."""

    connect: float = 10.0
    read: float = 300.0
    write: float = 300.0
    pool: float = 30.0


class Headers:
    """A request's headers in order; what a credential injector reads and sets."""

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.raw = raw

    def __setitem__(self, name: str, value: str) -> None:
        key = name.lower().encode("latin-1")
        self.raw = [(k, v) for k, v in self.raw if k.lower() != key]
        self.raw.append((name.encode("latin-1"), value.encode("latin-1")))

    def __getitem__(self, name: str) -> str:
        key = name.lower().encode("latin-1")
        for k, v in self.raw:
            if k.lower() == key:
                return v.decode("latin-1")
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and any(
            k.lower() == name.lower().encode("latin-1") for k, _ in self.raw
        )

    def items(self) -> list[tuple[str, str]]:
        return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self.raw]


class Request:
    """One request to the pool's origin: ``target`` is the path and query. ``Host`` and the
    body's framing (``Content-Length``, or chunks for a stream without one) are added here, so
    that a signing injector sees the headers exactly as they are sent."""

    def __init__(
        self,
        method: str,
        target: str,
        headers: list[tuple[bytes, bytes]],
        content: bytes | AsyncIterator[bytes],
        *,
        origin: str,
        host: bytes | None = None,
    ) -> None:
        self.method = method
        self.target = target
        self.url = origin + target
        host = urlsplit(origin).netloc.encode("ascii") if host is None else host
        raw = [(b"host", host), *headers]
        self.chunked = False
        if isinstance(content, bytes):
            if content or method in _WITH_LENGTH:
                raw.append((b"content-length", b"%d" % len(content)))
        elif not any(k.lower() == b"content-length" for k, _ in headers):
            raw.append((b"transfer-encoding", b"chunked"))
            self.chunked = True
        self.headers = Headers(raw)
        self.content = content

    def head(self) -> bytes:
        lines = [b"%s %s HTTP/1.1\r\n" % (self.method.encode("ascii"), self.target.encode())]
        lines += [b"%s: %s\r\n" % pair for pair in self.headers.raw]
        lines.append(b"\r\n")
        return b"".join(lines)
