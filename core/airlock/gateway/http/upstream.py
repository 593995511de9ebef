"""The upstream half of the HTTP gateway: send the request with the held credential, stream the
response back to the client (masking an echoed credential in text), and record it before its
last byte leaves (docs/gateways.md)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from airlock.gateway.h1.client import Pool, Request, Response, UpstreamError, UpstreamTimeout
from airlock.gateway.http.capture import BodyTap
from airlock.gateway.http.credentials import Injector
from airlock.gateway.http.exchange import (
    IDLE_FLUSH,
    ClientGone,
    EchoMask,
    Exchange,
    Refused,
    RequestBody,
    error_name,
)
from airlock.gateway.http.recording import ExchangeLog
from airlock.mask import Masker, MaskSettings
from airlock.policy.gateways import HttpGatewayConfig

__all__ = ["Upstream"]

Send = Callable[[dict[str, Any]], Awaitable[None]]
Gone = Callable[[], bool]  # has the client left?
_WHOLE = 64 * 1024  # text responses up to this size (by Content-Length) are masked whole

_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
        b"host",
    }
)
_HOP_BY_HOP_LENGTH = _HOP_BY_HOP | {b"content-length"}
# Responses that can carry an echo of the credential as text (and are masked for the client).
_TEXT_TYPES = re.compile("text/|json|xml|javascript|x-www-form-urlencoded|yaml")
_CLIENT_MASKED = {"client_masked": True}


class Upstream:
    """One gateway's upstream: ``config.upstream`` through ``pool`` (``gateway/h1/client.py``),
    with ``injector``'s credential; ``mask_echo`` masks that credential in text responses."""

    def __init__(
        self,
        config: HttpGatewayConfig,
        *,
        pool: Pool,
        injector: Injector,
        log: ExchangeLog,
        mask_echo: bool,
    ) -> None:
        upstream = urlsplit(config.upstream)
        self._base_path = upstream.path
        self._prefix = upstream.path.rstrip("/")
        self._pool = pool
        self._injector = injector
        self._log = log
        self._cap = config.record_bodies
        self._echo = _echo_masker(injector, config.name) if mask_echo else None
        # The session masker masks every held secret (registered with it as it was read): a
        # small text response it recorded whole and found clean holds none of them, so the
        # echo masker's own scan of it is skipped.
        self._fold = self._echo is not None and all(log.masks(v) for v in injector.secrets)
        # request headers not forwarded (as lower-case bytes, the way they are compared)
        self._drop = _HOP_BY_HOP | {n.lower().encode("latin-1") for n in injector.strip}
        if self._echo is not None:  # text responses are masked: they must arrive uncompressed
            self._drop = self._drop | {b"accept-encoding"}
        self._drop_buffered = self._drop | {b"content-length"}

    async def forward(self, ex: Exchange, body: RequestBody, send: Send) -> None:
        """Send the request upstream with the held credential and relay the response."""
        request = self._upstream_request(ex, body)
        ex.forwarded = True
        try:
            response = await self._pool.send(request, whole=_WHOLE)
        except ClientGone:
            raise
        except UpstreamTimeout as exc:
            raise Refused(
                504, "upstream timed out", "check the upstream", upstream=error_name(exc)
            ) from None
        except UpstreamError as exc:
            raise Refused(
                502, "upstream unreachable", "check the upstream URL", upstream=error_name(exc)
            ) from None
        watcher = None
        gone = ex.client_gone
        if gone is None:  # a server without the h1 extension: a task awaits http.disconnect
            event = asyncio.Event()
            watcher = asyncio.create_task(body.watch_disconnect(event))
            gone = event.is_set
        try:
            await self._relay(ex, response, send, gone)
        finally:
            if watcher is not None:
                watcher.cancel()
            await response.aclose()

    def _upstream_request(self, ex: Exchange, body: RequestBody) -> Request:
        wire = ex.path.wire
        prefix = self._prefix  # join_upstream, inline
        target = prefix + wire if wire != "/" or not prefix else prefix + "/"
        if ex.query:
            target += "?" + ex.query
        # the whole body is in memory: read without a hold, or held but small enough to sign
        buffered = body.done and (body.spool is None or len(body.buffer) == body.held_size)
        drop = self._drop_buffered if buffered else self._drop
        headers = [(k, v) for k, v in ex.headers if k not in drop]  # names are lower-case
        content: bytes | AsyncIterator[bytes]
        if buffered:
            content = bytes(body.buffer)
            ex.request_tap.feed(content)
        else:
            content = body.stream(ex.request_tap)
        if self._echo is not None:
            headers.append((b"accept-encoding", b"identity"))
        fixed = self._injector.header  # a fixed header, its name stripped from the client's
        if fixed is not None:
            headers.append(fixed)
        request = self._pool.request(ex.method, target, headers, content)
        if fixed is None:
            self._injector.apply(request, content if isinstance(content, bytes) else None)
        return request

    async def _relay(self, ex: Exchange, response: Response, send: Send, gone: Gone) -> None:
        ctype = response.header("content-type")
        coding = response.header("content-encoding")
        masked = self._masks_echo(ex, ctype, coding)
        drop = _HOP_BY_HOP_LENGTH if masked else _HOP_BY_HOP
        headers = [(k, v) for k, v in response.raw_headers if k.lower() not in drop]
        start = {"type": "http.response.start", "status": response.status_code, "headers": headers}
        tap = BodyTap(self._cap)
        # The response is recorded before its last byte is sent: once the client has the whole
        # response, so has the log. A bodiless response is complete with its headers.
        if ex.method == "HEAD" or response.status_code in (204, 304):
            last, error = await self._pump(response, _discard, tap, None, gone)
            self._record_relay(ex, response, tap, error, masked, ctype, coding)
            ex.responded = True
            await send(start)
        elif masked and (_content_length(response) or _WHOLE + 1) <= _WHOLE:
            # A small text response is masked whole and sent with its length in one message:
            # no chunked encoding, one write fewer on every keep-alive request.
            body = response.body_now()  # in the same read as the head, usually
            if body is not None and not gone():
                tap.feed(body)
                error = None
            else:
                body, error = await self._read_whole(response, body, tap, gone)
            clean = self._record_relay(ex, response, tap, error, masked, ctype, coding)
            assert self._echo is not None
            if error is not None:
                last = b""
            elif clean and self._fold:  # the session masker's scan found no held secret
                last = body
            else:
                last = self._echo.mask_bytes(body)
            headers.append((b"content-length", b"%d" % len(last)))
            ex.responded = True
            if error is None and ex.respond is not None:  # head and body, no awaits
                ex.respond(response.status_code, headers, last)
                return
            await send(start)
        else:
            ex.responded = True
            await send(start)
            echo = EchoMask(self._echo.stream()) if masked and self._echo is not None else None
            last, error = await self._pump(response, send, tap, echo, gone)
            self._record_relay(ex, response, tap, error, masked, ctype, coding)
        if error is None:
            await send({"type": "http.response.body", "body": last, "more_body": False})

    async def _read_whole(
        self, response: Response, whole: bytes | None, tap: BodyTap, gone: Gone
    ) -> tuple[bytes, str | None]:
        """The whole (small) body, and any error (``whole``: what ``body_now`` gave)."""
        if whole is not None:  # it was all in, but the client has gone
            return b"", "client disconnected mid-response"
        data = bytearray()
        try:
            async for chunk in response.aiter_raw():
                if gone():
                    return b"", "client disconnected mid-response"
                tap.feed(chunk)
                data += chunk
        except UpstreamError as exc:
            return b"", f"upstream failed mid-response: {error_name(exc)}"
        return bytes(data), None

    async def _pump(
        self,
        response: Response,
        send: Send,
        tap: BodyTap,
        echo: EchoMask | None,
        gone: Gone,
    ) -> tuple[bytes, str | None]:
        """Relay the body; return the bytes held back for the last message, and any error."""
        # With a Content-Length the last chunk is known by its size and held back.
        length = _content_length(response) if echo is None else None
        last = b""
        chunks = response.aiter_raw()
        try:
            while (chunk := await self._next_chunk(chunks, echo, send)) is not None:
                if gone():
                    return b"", "client disconnected mid-response"
                tap.feed(chunk)
                if length is not None and tap.size >= length:
                    last = chunk  # held back; the loop still drains so the connection is reused
                    continue
                out = chunk if echo is None else echo.feed(chunk)
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
        except UpstreamError as exc:
            return b"", f"upstream failed mid-response: {error_name(exc)}"
        return (last if echo is None else echo.flush()), None

    async def _next_chunk(
        self, chunks: AsyncIterator[bytes], echo: EchoMask | None, send: Send
    ) -> bytes | None:
        """The next upstream chunk, or None at the end. While the upstream is quiet, text the
        echo masker holds is released (all but a possible start of the credential)."""
        if echo is None:
            return await anext(chunks, None)
        pending = asyncio.ensure_future(anext(chunks, None))
        try:
            while True:
                done, _ = await asyncio.wait({pending}, timeout=IDLE_FLUSH)
                if done:
                    return pending.result()
                if out := echo.idle():
                    await send({"type": "http.response.body", "body": out, "more_body": True})
        finally:
            pending.cancel()

    def _record_relay(
        self,
        ex: Exchange,
        response: Response,
        tap: BodyTap,
        error: str | None,
        masked: bool,
        ctype: str,
        coding: str,
    ) -> bool:
        extra = _CLIENT_MASKED if masked else {}
        return self._log.response(
            ex,
            response.status_code,
            tap=tap,
            headers=response.raw_headers,
            content_type=ctype,
            content_encoding=coding,
            error=error,
            **extra,
        )

    def _masks_echo(self, ex: Exchange, ctype: str, coding: str) -> bool:
        """The response is text the held credential is masked in before the client sees it."""
        if self._echo is None or ex.method == "HEAD":
            return False
        if coding and coding.lower() not in ("", "identity"):
            return False
        return _TEXT_TYPES.search(ctype.lower()) is not None

    # ------------------------------------------------------------------ answers and events


def _echo_masker(injector: Injector, gateway: str) -> Masker | None:
    if not injector.secrets:
        return None
    rule = f"gateway.{gateway}"
    literals = tuple((rule, value) for value in injector.secrets)
    return Masker(MaskSettings(literals=literals, builtin=False))


async def _discard(message: dict[str, Any]) -> None:
    return None


def _content_length(response: Response) -> int | None:
    raw = response.header("content-length")
    return int(raw) if raw.isdigit() else None
