"""A plain-HTTP request through the egress proxy, once judged and connected: one request per
connection, hop-by-hop headers dropped, ``Host`` set from the URL, ``Connection: close`` both
ways; the response streamed back, its bytes counted."""

from __future__ import annotations

import asyncio

from airlock.egress.attempt import Attempt, Refused
from airlock.egress.protocol import (
    BodyFramer,
    HeadParser,
    ProxyProtocolError,
    RequestHead,
    ResponseHead,
    forward_head,
)

__all__ = ["forward"]

_CHUNK = 256 * 1024


async def forward(
    head: RequestHead,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    upstream: asyncio.StreamWriter,
    rest: bytes,
    attempt: Attempt,
) -> None:
    try:
        framer = BodyFramer.for_request(head)
    except ProxyProtocolError as exc:
        raise Refused(400, "airlock.bad-request", str(exc)) from None
    headers = tuple((k, v) for k, v in head.headers if k.lower() not in ("host", "expect"))
    authority = head.host if head.port == 80 else f"{head.host}:{head.port}"
    if ":" in head.host:
        authority = f"[{head.host}]" if head.port == 80 else f"[{head.host}]:{head.port}"
    first = forward_head(
        f"{head.method} {head.path} HTTP/1.1",
        headers,
        (("Host", authority), ("Connection", "close")),
    )
    upstream.write(first)
    attempt.up += len(first)
    if (head.header("expect") or "").lower() == "100-continue" and not framer.done:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # the judging is already done
    await _send_body(framer, reader, upstream, rest, attempt)
    await _return_response(head, writer, up_reader, attempt)


async def _send_body(
    framer: BodyFramer,
    reader: asyncio.StreamReader,
    upstream: asyncio.StreamWriter,
    data: bytes,
    attempt: Attempt,
) -> None:
    while not framer.done:
        if not data:
            data = await reader.read(_CHUNK)
            if not data:
                raise Refused(0, "airlock.bad-request", "client closed inside the request body")
        try:
            used, _ = framer.feed(data)
        except ProxyProtocolError as exc:
            raise Refused(0, "airlock.bad-request", str(exc)) from None
        upstream.write(data[:used])
        attempt.up += used
        await upstream.drain()
        data = data[used:]
    # Bytes after the body would be a second request; one request per connection: dropped.


async def _return_response(
    head: RequestHead,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    attempt: Attempt,
) -> None:
    parser = HeadParser(response=True)
    response = await _response_head(parser, up_reader, b"", attempt)
    while 100 <= response.status < 200:  # interim responses: not forwarded (Expect is ours)
        leftover, parser = parser.rest, HeadParser(response=True)
        response = await _response_head(parser, up_reader, leftover, attempt)
    attempt.data["status"] = response.status
    status_line = f"HTTP/1.1 {response.status} {response.reason}".rstrip()
    out = forward_head(status_line, response.headers, (("Connection", "close"),))
    writer.write(out)
    attempt.down += len(out)
    body = parser.rest
    try:
        framer = BodyFramer.for_response(response, head.method)
    except ProxyProtocolError:
        framer = BodyFramer("close")
    while True:
        if body:
            used, done = framer.feed(body)
            writer.write(body[:used])
            attempt.down += used
            await writer.drain()
            if done:
                return
        if framer.done:
            return
        body = await up_reader.read(_CHUNK)
        if not body:
            return


async def _response_head(
    parser: HeadParser, up_reader: asyncio.StreamReader, data: bytes, attempt: Attempt
) -> ResponseHead:
    rule = str(attempt.data.get("rule_id"))
    while True:
        if not data:
            data = await up_reader.read(_CHUNK)
            if not data:
                raise Refused(502, rule, "upstream closed before answering")
        try:
            response = parser.feed(data)
        except ProxyProtocolError as exc:
            raise Refused(502, rule, str(exc)) from None
        if response is not None:
            assert isinstance(response, ResponseHead)
            return response
        data = b""
