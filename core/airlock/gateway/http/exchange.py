"""One request's state in the HTTP gateway, and the client's body as the proxy reads it.

:class:`Exchange` travels through ``proxy.py``; :class:`RequestBody` buffers, holds (spools) and
streams the client's body and notices the client leaving; :class:`EchoMask` masks the held
credential in a text response as it streams. :class:`Refused` and :class:`ClientGone` end an
exchange early.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import re
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from airlock.gateway.http.capture import BodyTap
from airlock.gateway.http.hold import Hold, Refuse
from airlock.gateway.http.paths import NormalPath
from airlock.mask import StreamMasker

__all__ = [
    "ClientGone",
    "EchoMask",
    "Exchange",
    "Refused",
    "RequestBody",
    "error_name",
    "refused",
    "ticket_from",
]

Receive = Callable[[], Awaitable[dict[str, Any]]]
_SPOOL_CHUNK = 256 * 1024
_OVERRIDES = frozenset({b"x-http-method-override", b"x-http-method", b"x-method-override"})
_KEYS = {
    name: name.encode()
    for name in (
        "authorization",
        "proxy-authorization",
        "content-type",
        "content-encoding",
        "x-original-url",
        "x-rewrite-url",
    )
}
# ``_method=DELETE`` in the query or a form body: Rails, Laravel, Symfony, Express run it as that
# method. In a multipart body the field is found by its part header.
_FORM_FIELD = "_method"
_MULTIPART_FIELD = re.compile(
    rb'name="?_method"?[^\r\n]*\r?\n(?:[^\r\n]+\r?\n)*\r?\n([^\r\n]*)', re.I
)
PEER_POLL = 0.1  # seconds between two looks at a held request's socket (RequestBody.disconnected)
IDLE_FLUSH = 0.1  # seconds of upstream quiet after which masked text held back is released


class Refused(Exception):
    """Answer the client with ``status`` and a JSON error; nothing goes upstream."""

    def __init__(self, status: int, error: str, hint: str = "", **extra: Any) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.hint = hint
        self.extra = extra


class ClientGone(Exception):
    """The client disconnected or went silent."""


@dataclass
class Exchange:
    """One request's state as it moves through the proxy."""

    id: str
    method: str
    path: NormalPath
    query: str
    headers: list[tuple[bytes, bytes]]
    started: float
    request_tap: BodyTap
    responded: bool = False
    request_recorded: bool = False
    forwarded: bool = False
    body: RequestBody | None = None
    hold: Hold | None = None
    # says whether the client has left, without awaiting (the h1 server's scope extension)
    client_gone: Callable[[], bool] | None = None
    # sends a whole response at once, without awaiting (the h1 server's scope extension)
    respond: Callable[[int, list[tuple[bytes, bytes]], bytes], None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # copied once, names lower-case: every lookup and filter after this compares bytes
        self.headers = [(k.lower(), v) for k, v in self.headers]

    def methods(self, form: bytes = b"") -> list[str]:
        """The request's method, and those its method overrides name: frameworks (Rails,
        Laravel, Express, Google APIs) run ``POST`` + ``X-HTTP-Method-Override: DELETE``, or
        ``_method=DELETE`` in the query or a form body (``form``), as a DELETE, so the
        guardrails judge every one of them; a HEAD is judged as a GET too. Header names are
        lower-case (as the proxy stores them)."""
        values = [v.decode("latin-1") for k, v in self.headers if k in _OVERRIDES]
        if self.query:
            values += [
                v for k, v in parse_qsl(self.query, keep_blank_values=True) if k == _FORM_FIELD
            ]
        if form:
            values += form_methods(form, self.header("content-type"))
        method = self.method.upper()
        if not values and method != "HEAD":
            return [method]
        names = [method]
        for value in values:
            names += value.upper().replace(",", " ").split()
        if "HEAD" in names:  # servers run the GET handler for a HEAD (RFC 9110 §9.3.2)
            names.append("GET")
        return list(dict.fromkeys(names))

    def has_form_body(self) -> bool:
        """A body a framework would read ``_method`` from."""
        return is_form(self.header("content-type"))

    def header(self, name: str) -> str:
        """The first value of header ``name`` (lower-case), or ``""``."""
        key = _KEYS.get(name) or name.encode("latin-1")
        for k, v in self.headers:  # a handful of headers: a scan beats building an index
            if k == key:
                return v.decode("latin-1")
        return ""


class RequestBody:
    """The client's request body: a buffered prefix, then the rest, streamed on demand."""

    def __init__(
        self,
        receive: Receive,
        timeout: float,
        body_now: Callable[[], bytes | None] | None = None,
        peer_closed: Callable[[], bool] | None = None,
    ) -> None:
        self._receive = receive
        self._timeout = timeout
        # the server's ``airlock.body_now`` extension: the whole body at once, when it is in
        self._body_now = body_now
        # the server's ``airlock.peer_closed``: the client closed its end (asked of the socket)
        self._peer_closed = peer_closed
        self.buffer = bytearray()
        self.done = False
        self.spool: Any = None  # a SpooledTemporaryFile holding the whole body, once held
        self.held_size = 0
        self.held_sha256 = ""

    async def hold(self, hold: Hold, in_memory: int) -> None:
        """Read the whole body into a spool (memory up to ``in_memory`` bytes, then a private
        temporary file), counted and hashed by ``hold``: the body forwarded later is exactly
        the one hashed here."""
        spool = tempfile.SpooledTemporaryFile(max_size=in_memory)  # noqa: SIM115 (closed in stream)
        self.spool = spool
        chunk = bytes(self.buffer)
        while True:
            spool.write(chunk)
            for action in hold.body(chunk):
                raise refused(action, hold.rule_id)
            if self.done:
                break
            chunk = await self._next()
        self.held_size, self.held_sha256 = hold.size, hold.sha256

    def held_prefix(self, size: int) -> bytes:
        """The first ``size`` bytes of a held body."""
        self.spool.seek(0)
        data: bytes = self.spool.read(size)
        return data

    def close(self) -> None:
        """Drop the spool, if any."""
        if self.spool is not None:
            self.spool.close()

    async def _next(self) -> bytes:
        try:
            async with asyncio.timeout(self._timeout):  # no task per read, unlike wait_for
                message = await self._receive()
        except TimeoutError as exc:
            raise Refused(
                408,
                "the client went silent while sending its body",
                "send the body without pauses longer than the client timeout",
            ) from exc
        if message["type"] == "http.disconnect":
            raise ClientGone("client disconnected")
        self.done = not message.get("more_body", False)
        return bytes(message.get("body", b""))

    def take_now(self) -> bool:
        """Take the whole body if it has all arrived (the server's ``airlock.body_now``), with
        no receive round; True when the body is then read whole."""
        if not self.done and not self.buffer and self._body_now is not None:
            whole = self._body_now()
            if whole is not None:
                self.buffer += whole
                self.done = True
        return self.done

    async def fill(self, limit: int) -> None:
        """Buffer until ``limit`` bytes (or a little more) or the end of the body."""
        if self.take_now():
            return
        while not self.done and len(self.buffer) < limit:
            self.buffer += await self._next()

    async def watch_disconnect(self, gone: asyncio.Event) -> None:
        """Once the body is read, the next message is the disconnect: flag it."""
        if not self.done:
            return
        await self.disconnected()
        gone.set()

    async def disconnected(self) -> None:
        """Return when the client has gone (call once the body is read whole). With the
        server's ``airlock.peer_closed``, the socket is asked too, every ``PEER_POLL`` seconds:
        a connection whose reading is paused (a request pipelined behind this one) is not told
        of the client's leaving by ``receive``."""
        if self._peer_closed is None:
            await self._until_disconnect()
            return
        until = asyncio.ensure_future(self._until_disconnect())
        try:
            while not self._peer_closed():
                done, _ = await asyncio.wait({until}, timeout=PEER_POLL)
                if done:
                    return
        finally:
            until.cancel()

    def peer_closed(self) -> bool:
        """The server's ``airlock.peer_closed`` now (False without it)."""
        return self._peer_closed is not None and self._peer_closed()

    async def _until_disconnect(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass

    def summary(self) -> dict[str, Any]:
        """Size and SHA-256 of the body as far as the gateway read it (for a refusal)."""
        data: dict[str, Any] = {
            "size": len(self.buffer),
            "sha256": hashlib.sha256(self.buffer).hexdigest(),
        }
        return data if self.done else data | {"complete": False}

    async def stream(self, tap: BodyTap) -> AsyncIterator[bytes]:
        """The whole body: the held spool, or the buffer then the rest as it arrives."""
        if self.spool is not None:
            self.spool.seek(0)
            while chunk := self.spool.read(_SPOOL_CHUNK):
                tap.feed(chunk)
                yield chunk
            return
        if self.buffer:
            tap.feed(bytes(self.buffer))
            yield bytes(self.buffer)
        while not self.done:
            chunk = await self._next()
            if chunk:
                tap.feed(chunk)
                yield chunk


class EchoMask:
    """Masks the held credential in a text response as it streams. Output is held only while it
    might be the start of the credential, and released at least every ``_IDLE_FLUSH`` seconds,
    so a slow trickle (progress lines, server-sent events) still arrives promptly."""

    def __init__(self, stream: StreamMasker) -> None:
        self._stream = stream
        self._released = time.monotonic()

    def feed(self, chunk: bytes) -> bytes:
        out = self._stream.feed(chunk)
        if not out and time.monotonic() - self._released >= IDLE_FLUSH:
            out = self._stream.flush_idle()
        if out:
            self._released = time.monotonic()
        return out

    def idle(self) -> bytes:
        out = self._stream.flush_idle()
        self._released = time.monotonic()
        return out

    def flush(self) -> bytes:
        return self._stream.flush()


def is_form(content_type: str) -> bool:
    kind = content_type.partition(";")[0].strip().lower()
    return kind in ("application/x-www-form-urlencoded", "multipart/form-data")


def form_methods(body: bytes, content_type: str) -> list[str]:
    """The ``_method`` values in a form body (url-encoded or multipart)."""
    if "multipart" in content_type.lower():
        return [m.decode("latin-1") for m in _MULTIPART_FIELD.findall(body)]
    text = body.decode("latin-1")
    return [v for k, v in parse_qsl(text, keep_blank_values=True) if k == _FORM_FIELD]


def ticket_from(header: str) -> str | None:
    scheme, _, value = header.strip().partition(" ")
    scheme = scheme.lower()
    value = value.strip()
    if not value:
        return None
    if scheme in ("bearer", "token"):
        return value
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return ""
        return decoded.partition(":")[2]
    return None


def error_name(exc: BaseException) -> str:
    return type(exc).__name__


def refused(action: object, rule_id: str) -> Refused:
    """The exception for a hold's :class:`~airlock.gateway.http.hold.Refuse` action."""
    assert isinstance(action, Refuse), action
    return Refused(action.status, action.error, action.hint, rule_id=rule_id)
