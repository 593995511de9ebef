"""Sans-I/O HTTP/1.x framing for the egress proxy: heads and bodies, no sockets.

    parser = HeadParser()              # or HeadParser(response=True) for a status line
    head = parser.feed(data)           # None until the blank line; then a RequestHead
    parser.rest                        # bytes after the head (body or tunnelled data)

    body = BodyFramer.for_request(head)
    used, done = body.feed(data)       # how many bytes of ``data`` belong to this message

:class:`RequestHead` understands the two forms a forward proxy receives: ``CONNECT host:port``
(authority form) and ``GET http://host[:port]/path`` (absolute form); anything else is a
:class:`ProxyProtocolError` (answered 400). Limits are fixed: a head is at most 32 KiB with at
most 100 header lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from airlock.errors import UsageError
from airlock.gateway.http.paths import normalize_path

__all__ = [
    "HOP_BY_HOP",
    "MAX_HEAD_BYTES",
    "BodyFramer",
    "HeadParser",
    "ProxyProtocolError",
    "RequestHead",
    "ResponseHead",
    "forward_head",
]

MAX_HEAD_BYTES = 32 * 1024
_MAX_HEADERS = 100
_TOKEN_RE = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_VERSION_RE = re.compile(rb"^HTTP/1\.[01]$")
_HOST_PORT_RE = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._-]+):([0-9]{1,5})$")
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    }
)


class ProxyProtocolError(UsageError):
    """The client sent something that is not a request a forward proxy accepts (→ 400)."""


@dataclass(frozen=True)
class RequestHead:
    """A parsed request head. ``host``/``port`` are the target; ``path`` is origin-form
    (``/p?q``) for plain HTTP, normalised (escapes decoded, dot segments resolved, as
    gateway/http/paths.py does: what is judged is what is sent), and ``None`` for CONNECT;
    ``readings`` are the path's readings the rules judge (strictest wins)."""

    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]
    host: str
    port: int
    path: str | None
    readings: tuple[str, ...] = ()

    @property
    def is_connect(self) -> bool:
        return self.method == "CONNECT"

    def header(self, name: str) -> str | None:
        """The last value of header ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        found = None
        for key, value in self.headers:
            if key.lower() == wanted:
                found = value
        return found


@dataclass(frozen=True)
class ResponseHead:
    """A parsed status line and headers."""

    version: str
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]


class HeadParser:
    """Collects bytes up to the end of one head (``\\r\\n\\r\\n``) and parses it."""

    def __init__(self, *, response: bool = False) -> None:
        self._buffer = bytearray()
        self._response = response
        self.rest = b""

    def feed(self, data: bytes) -> RequestHead | ResponseHead | None:
        """Add ``data``; the head once complete (then :attr:`rest` holds what followed)."""
        start = max(len(self._buffer) - 3, 0)
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n", start)
        if end < 0:
            if len(self._buffer) > MAX_HEAD_BYTES:
                raise ProxyProtocolError("request head larger than 32 KiB")
            return None
        if end > MAX_HEAD_BYTES:
            raise ProxyProtocolError("request head larger than 32 KiB")
        head, self.rest = bytes(self._buffer[:end]), bytes(self._buffer[end + 4 :])
        self._buffer.clear()
        lines = head.split(b"\r\n")
        headers = _headers(lines[1:])
        if self._response:
            return _response_line(lines[0], headers)
        return _request_line(lines[0], headers)


def _headers(lines: list[bytes]) -> tuple[tuple[str, str], ...]:
    if len(lines) > _MAX_HEADERS:
        raise ProxyProtocolError("more than 100 header lines")
    out = []
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN_RE.match(name):  # also refuses obs-fold and "Name :"
            raise ProxyProtocolError("malformed header line")
        text = value.strip(b" \t")
        if b"\r" in text or b"\n" in text or b"\x00" in text:
            raise ProxyProtocolError("control character in a header value")
        out.append((name.decode("ascii"), text.decode("latin-1")))
    return tuple(out)


def _request_line(line: bytes, headers: tuple[tuple[str, str], ...]) -> RequestHead:
    parts = line.split(b" ")
    if len(parts) != 3 or not _TOKEN_RE.match(parts[0]) or not _VERSION_RE.match(parts[2]):
        raise ProxyProtocolError("malformed request line (expected METHOD TARGET HTTP/1.1)")
    method, version = parts[0].decode("ascii"), parts[2].decode("ascii")
    try:
        target = parts[1].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyProtocolError("non-ASCII request target") from None
    if method == "CONNECT":
        host, port = _authority(target)
        return RequestHead(method, target, version, headers, host, port, None)
    return _absolute(method, target, version, headers)


def _authority(target: str) -> tuple[str, int]:
    match = _HOST_PORT_RE.match(target)
    if match is None:
        raise ProxyProtocolError("CONNECT needs HOST:PORT")
    port = int(match.group(2))
    if not 1 <= port <= 65535:
        raise ProxyProtocolError("port out of range")
    return match.group(1).strip("[]").lower().rstrip("."), port


def _absolute(
    method: str, target: str, version: str, headers: tuple[tuple[str, str], ...]
) -> RequestHead:
    if not target.lower().startswith("http://"):
        raise ProxyProtocolError(
            "a forward proxy request needs an absolute http:// URL (use CONNECT for https)"
        )
    try:
        parts = urlsplit(target)
        port = parts.port or 80
    except ValueError:
        raise ProxyProtocolError("malformed URL in the request line") from None
    if not parts.hostname or parts.username is not None or parts.password is not None:
        raise ProxyProtocolError("the URL needs a host and no user:password@")
    if not 1 <= port <= 65535 or any(c in target for c in "\\#"):
        raise ProxyProtocolError("malformed URL in the request line")
    if parts.path and not parts.path.startswith("/"):
        raise ProxyProtocolError("malformed URL path")
    normal = normalize_path(parts.path or "/")
    path = normal.wire + (f"?{parts.query}" if parts.query else "")
    host = parts.hostname.lower().rstrip(".")
    return RequestHead(method, target, version, headers, host, port, path, normal.candidates)


def _response_line(line: bytes, headers: tuple[tuple[str, str], ...]) -> ResponseHead:
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not _VERSION_RE.match(parts[0]) or not parts[1].isdigit():
        raise ProxyProtocolError("malformed status line from the upstream")
    reason = parts[2].decode("latin-1") if len(parts) == 3 else ""
    return ResponseHead(parts[0].decode("ascii"), int(parts[1]), reason, headers)


def forward_head(
    first_line: str, headers: tuple[tuple[str, str], ...], extra: tuple[tuple[str, str], ...]
) -> bytes:
    """Serialize a head for the next hop: hop-by-hop headers (and those the Connection header
    names) dropped, ``extra`` appended."""
    named = {
        token.strip().lower()
        for key, value in headers
        if key.lower() == "connection"
        for token in value.split(",")
    }
    kept = [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP and k.lower() not in named]
    lines = [first_line, *(f"{k}: {v}" for k, v in (*kept, *extra))]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class BodyFramer:
    """Where one HTTP/1.1 message body ends: Content-Length, chunked, or until close.

    :meth:`feed` returns ``(used, done)``: how many bytes of the input belong to the body, and
    whether the body is complete. Bytes after the end belong to the next message (and a proxy
    that does one request per connection refuses them).
    """

    def __init__(self, mode: str, length: int = 0) -> None:
        self._mode = mode  # "length" | "chunked" | "close"
        self._left = length
        self._chunk = _ChunkState()

    @classmethod
    def for_request(cls, head: RequestHead) -> BodyFramer:
        return cls._from_headers(head.headers, default_close=False)

    @classmethod
    def for_response(cls, head: ResponseHead, request_method: str) -> BodyFramer:
        if request_method == "HEAD" or head.status in (204, 304) or 100 <= head.status < 200:
            return cls("length", 0)
        return cls._from_headers(head.headers, default_close=True)

    @classmethod
    def _from_headers(cls, headers: tuple[tuple[str, str], ...], default_close: bool) -> BodyFramer:
        encodings = [v.strip().lower() for k, v in headers if k.lower() == "transfer-encoding"]
        lengths = {v.strip() for k, v in headers if k.lower() == "content-length"}
        if encodings:
            if lengths or encodings[-1].split(",")[-1].strip() != "chunked":
                raise ProxyProtocolError("ambiguous message framing (Transfer-Encoding)")
            return cls("chunked")
        if len(lengths) > 1 or any(not v.isdigit() for v in lengths):
            raise ProxyProtocolError("invalid Content-Length")
        if lengths:
            return cls("length", int(lengths.pop()))
        return cls("close") if default_close else cls("length", 0)

    @property
    def done(self) -> bool:
        if self._mode == "length":
            return self._left == 0
        return self._mode == "chunked" and self._chunk.done

    def feed(self, data: bytes) -> tuple[int, bool]:
        if self._mode == "close":
            return len(data), False
        if self._mode == "length":
            used = min(self._left, len(data))
            self._left -= used
            return used, self._left == 0
        used = self._chunk.feed(data)
        return used, self._chunk.done


class _ChunkState:
    """The chunked transfer coding, byte-exact: size line, data, CRLF, …, 0, trailers, CRLF."""

    def __init__(self) -> None:
        self.state = "size"
        self.line = bytearray()
        self.left = 0
        self.done = False

    def feed(self, data: bytes) -> int:
        i = 0
        while i < len(data) and not self.done:
            if self.state == "data":
                take = min(self.left, len(data) - i)
                i += take
                self.left -= take
                if self.left == 0:
                    self.state = "data-end"
                continue
            byte = data[i : i + 1]
            i += 1
            self.line += byte
            if len(self.line) > 4096:
                raise ProxyProtocolError("chunk line too long")
            if byte == b"\n":
                self._line_done(bytes(self.line).rstrip(b"\r\n"))
                self.line.clear()
        return i

    def _line_done(self, line: bytes) -> None:
        if self.state == "size":
            size = line.split(b";", 1)[0].strip()
            if not size or any(c not in b"0123456789abcdefABCDEF" for c in size):
                raise ProxyProtocolError("malformed chunk size")
            self.left = int(size, 16)
            self.state = "data" if self.left else "trailer"
        elif self.state == "data-end":
            if line:
                raise ProxyProtocolError("chunk data longer than its size")
            self.state = "size"
        elif not line:  # trailer section ends with an empty line
            self.done = True
