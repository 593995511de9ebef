"""One client connection to the egress proxy: judge, resolve, connect, relay, record.

The parsing is sans-I/O (``protocol.py``, ``tls.py``); the rules are ``policy.network``; this
module only moves bytes and keeps the ``net.connect`` record of the attempt. In order:

1. read the request head (``CONNECT host:port`` or ``METHOD http://host/path``); bad → 400;
2. the rules decide on host, port (and method, path for plain HTTP); deny → 403 naming the rule
   and what to add; ``require_approval`` → held until ``approve(op)`` answers;
3. the host is resolved *here* (the agent has no DNS), IP literals need a rule naming them, and
   any answer that is not a public address (``addresses.py``: loopback, private, link-local,
   metadata, their IPv6 forms...) is refused unless the rule says ``local_addresses: true``;
4. CONNECT: 200, then the TLS ClientHello is read; its SNI must equal the CONNECT host (no SNI
   for a name, or not TLS at all → the tunnel is closed); then bytes flow both ways untouched.
   With the compiled relay (``native.py``) the tunnel is handed over right after the 200 and
   the relay thread reads and checks the ClientHello the same way. Plain HTTP
   (``forward.py``): one request per connection, hop-by-hop headers dropped, ``Host`` set from
   the URL, ``Connection: close`` both ways.
5. one ``net.connect`` event when the attempt ends (or the proxy closes).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from airlock.egress.addresses import Address, parse_address, refused_reason
from airlock.egress.attempt import Attempt, Refused
from airlock.egress.forward import forward
from airlock.egress.native import Ended, NativeRelay, Verdict
from airlock.egress.protocol import (
    HeadParser,
    ProxyProtocolError,
    RequestHead,
)
from airlock.egress.relay import relay, take_buffer
from airlock.egress.tls import ClientHello, ClientHelloReader
from airlock.events import EventType
from airlock.gate.interface import Approve, Operation, Record
from airlock.policy.network import EgressRules, NetDecision

__all__ = ["Context", "Resolve", "handle_connection"]

_Refused = Refused  # the name tests know it by

Resolve = Callable[[str, int], Awaitable[list[str]]]
_SETS_NODELAY = "uvloop.loop"  # its TCP transports set TCP_NODELAY themselves: not twice
_CHUNK = 256 * 1024
_HEAD_TIMEOUT = 30.0
_HELLO_TIMEOUT = 10.0
_CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True)
class Context:
    """What every connection shares."""

    rules: EgressRules
    record: Record
    approve: Approve | None
    resolve: Resolve
    native: NativeRelay | None = None  # the compiled relay, when built (``native.py``)


async def handle_connection(
    ctx: Context, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Serve one client connection to the end; always records one ``net.connect``."""
    attempt = Attempt()
    upstream: asyncio.StreamWriter | asyncio.BaseTransport | None = None
    refusal: Refused | None = None
    try:
        head, rest = await _read_head(reader)
        attempt.data.update(_describe(head))
        decision = await _judge(ctx, head, attempt)
        addresses = await _addresses(ctx, head, decision)
        if head.is_connect and ctx.native is not None:  # the compiled relay takes it all
            upstream = await _open(addresses, head.port, attempt, _connect_paused)
            await _native_tunnel(ctx.native, head, reader, writer, upstream, rest, attempt)
        else:
            up_reader, up_writer = await _open(addresses, head.port, attempt, _connect_stream)
            upstream = up_writer
            if head.is_connect:
                await _tunnel(head, reader, writer, up_reader, up_writer, rest, attempt)
            else:
                await forward(head, reader, writer, up_reader, up_writer, rest, attempt)
    except Refused as refused:
        refusal = refused
        attempt.data.update(outcome="denied", rule_id=refused.rule_id, error=refused.reason)
        if refused.status:
            attempt.data["status"] = refused.status
    except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
        attempt.data.setdefault("outcome", "denied")
        attempt.data["error"] = attempt.data.get("error") or _os_reason(exc)
    except asyncio.CancelledError:
        attempt.data["error"] = attempt.data.get("error") or "closed: the proxy stopped"
        raise
    except Exception as exc:  # fail closed: the connection ends, and is recorded
        attempt.data.setdefault("outcome", "denied")
        attempt.data["error"] = f"egress proxy error: {type(exc).__name__}"
    finally:
        # Recorded before the client hears back: what it saw is always already in the log.
        # A log that cannot be written fails the session (its writer says so); this
        # connection still ends here.
        with contextlib.suppress(Exception):
            ctx.record(str(EventType.NET_CONNECT), attempt.event())
        for fd in attempt.held:  # a tunnel the relay thread refused: closed only now
            os.close(fd)
        if upstream is not None:
            upstream.close()
        if refusal is not None and refusal.status:
            await _answer(writer, refusal.status, refusal.reason)
        writer.close()


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "connection closed early"
    return (getattr(exc, "strerror", None) or type(exc).__name__)[:200]


async def _read_head(reader: asyncio.StreamReader) -> tuple[RequestHead, bytes]:
    parser = HeadParser()
    try:
        async with asyncio.timeout(_HEAD_TIMEOUT):
            return await _head_from(reader, parser)
    except ProxyProtocolError as exc:
        raise Refused(400, "airlock.bad-request", str(exc)) from None


async def _head_from(reader: asyncio.StreamReader, parser: HeadParser) -> tuple[RequestHead, bytes]:
    while True:
        data = await reader.read(65536)
        if not data:
            raise Refused(0, "airlock.bad-request", "connection closed before a request")
        head = parser.feed(data)
        if head is not None:
            assert isinstance(head, RequestHead)
            return head, parser.rest


def _describe(head: RequestHead) -> dict[str, Any]:
    data: dict[str, Any] = {"host": head.host, "port": head.port}
    if head.is_connect:
        data["kind"] = "connect"
    else:
        data.update(
            kind="http", method=head.method, path=head.readings[0] if head.readings else "/"
        )
    return data


async def _judge(ctx: Context, head: RequestHead, attempt: Attempt) -> NetDecision:
    method = None if head.is_connect else head.method
    path = head.readings[0] if head.readings else "/"
    if head.is_connect:
        decision = ctx.rules.decide(head.host, head.port)
    else:
        decision = ctx.rules.decide_readings(head.host, head.port, head.method, head.readings)
    attempt.data.update(rule_id=decision.rule_id)
    if decision.action == "deny":
        raise Refused(403, decision.rule_id, decision.hint or "refused by the network policy")
    if decision.action == "require_approval":
        target = f"{head.host}:{head.port}"
        text = f"CONNECT {target}" if head.is_connect else f"{method} http://{target}{path}"
        op = Operation(kind="http", text=text, rule_id=decision.rule_id, gateway="egress")
        approved = ctx.approve is not None and await ctx.approve(op)
        if not approved:
            raise Refused(
                403,
                decision.rule_id,
                f"{text} needs approval (rule {decision.rule_id}) and was not approved",
            )
        attempt.data["outcome"] = "approved"
    else:
        attempt.data["outcome"] = "allowed"
    return decision


@functools.lru_cache(maxsize=4096)
def _ip(text: str) -> Address | None:
    """``parse_address``, kept: the same few hosts and answers come back on every connection.
    A name that ends in a letter and has no ``:`` is no IP literal (``ipaddress`` is slow)."""
    if text[-1:].isalpha() and ":" not in text:
        return None
    return parse_address(text)


async def _addresses(ctx: Context, head: RequestHead, decision: NetDecision) -> list[str]:
    literal = _ip(head.host)
    if literal is not None:
        found = [str(literal)]
    else:
        try:
            found = await ctx.resolve(head.host, head.port)
        except OSError:
            raise Refused(502, decision.rule_id, f"cannot resolve {head.host}") from None
        if not found:
            raise Refused(502, decision.rule_id, f"cannot resolve {head.host}")
    checked = [a for a in (_ip(f) for f in found) if a is not None]
    if not decision.local_addresses:
        for address in checked:
            reason = refused_reason(address)
            if reason is not None:
                raise Refused(
                    403,
                    "airlock.local-address",
                    f"{head.host} resolves to {address}, {reason}, which the proxy refuses "
                    "(only public addresses are reached); if intended, set "
                    f"local_addresses: true on rule {decision.rule_id}",
                )
    return [str(a) for a in checked]


_T = TypeVar("_T")


async def _open(
    addresses: list[str],
    port: int,
    attempt: Attempt,
    connect: Callable[[str, int], Awaitable[_T]],
) -> _T:
    """The first of ``addresses`` that ``connect`` reaches (10 s each); else 502."""
    last: BaseException | None = None
    for address in addresses:
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT):
                connected = await connect(address, port)
        except (OSError, TimeoutError) as exc:
            last = exc
            continue
        attempt.data["address"] = address
        return connected
    reason = _os_reason(last) if last is not None else "no address"
    raise Refused(502, str(attempt.data.get("rule_id", "")), f"cannot connect: {reason}")


async def _connect_stream(
    address: str, port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(address, port, limit=_CHUNK)
    sock = writer.get_extra_info("socket")
    if sock is not None and type(writer.transport).__module__ != _SETS_NODELAY:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return reader, writer


class _Paused(asyncio.Protocol):
    """The upstream side of a tunnel for the compiled relay: never read by the loop (the relay
    thread reads it once the ClientHello passed), so no stream is built for it."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.ReadTransport, transport).pause_reading()

    def eof_received(self) -> bool:
        return True  # unreachable while paused; keep the socket for the relay regardless


async def _connect_paused(address: str, port: int) -> asyncio.BaseTransport:
    transport, _ = await asyncio.get_running_loop().create_connection(_Paused, address, port)
    return transport


async def _answer(writer: asyncio.StreamWriter, status: int, reason: str) -> None:
    phrase = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway"}.get(status, "Error")
    body = f"Airlock egress proxy: {reason}\n".encode()
    head = (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\nX-Airlock-Egress: refused\r\n\r\n"
    )
    with contextlib.suppress(OSError):
        writer.write(head.encode("latin-1") + body)
        await writer.drain()


async def _native_tunnel(
    native: NativeRelay,
    head: RequestHead,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    upstream: asyncio.BaseTransport,
    rest: bytes,
    attempt: Attempt,
) -> None:
    """200, then the relay thread reads and checks the ClientHello, and relays."""
    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
    ended = await native.relay(
        writer.transport,
        upstream,
        lambda: rest + take_buffer(reader),  # taken once the client is paused
        b"",
        attempt,
        expect=head.host,
        sni_optional=_ip(head.host) is not None,
        hello_timeout=_HELLO_TIMEOUT,
        held=attempt.held,
    )
    _native_verdict(head, ended, attempt)


async def _tunnel(
    head: RequestHead,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    upstream: asyncio.StreamWriter,
    rest: bytes,
    attempt: Attempt,
) -> None:
    """200, the ClientHello read and checked here, then the Python relay."""
    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
    await writer.drain()
    hello_bytes = await _read_hello(head, reader, rest, attempt)
    upstream.write(hello_bytes)
    attempt.up += len(hello_bytes)
    await relay(reader, writer, up_reader, upstream, attempt)


async def _read_hello(
    head: RequestHead, reader: asyncio.StreamReader, rest: bytes, attempt: Attempt
) -> bytes:
    hello_reader = ClientHelloReader()
    seen = bytearray(rest)
    hello = hello_reader.feed(rest) if rest else None
    async with asyncio.timeout(_HELLO_TIMEOUT):
        while hello is None:
            data = await reader.read(16384)
            if not data:
                raise Refused(0, "airlock.sni", "closed before the TLS ClientHello")
            seen += data
            hello = hello_reader.feed(data)
    _check_hello(head, hello, attempt)
    return bytes(seen)


def _check_hello(head: RequestHead, hello: ClientHello, attempt: Attempt) -> None:
    """Refuse unless the ClientHello names the CONNECT host (or none, for an IP literal)."""
    attempt.data["sni"] = hello.sni
    expected = head.host
    if not hello.tls or hello.malformed:
        raise Refused(0, "airlock.sni", "not a TLS ClientHello: only TLS goes through CONNECT")
    if hello.sni is None and _ip(expected) is None:
        raise Refused(0, "airlock.sni", f"no SNI in the ClientHello for {expected}")
    if hello.sni is not None and hello.sni != expected:
        raise Refused(0, "airlock.sni", f"SNI {hello.sni} differs from the CONNECT host")


def _native_verdict(head: RequestHead, ended: Ended, attempt: Attempt) -> None:
    """Record the compiled relay's ClientHello check as :func:`_check_hello` would have: the
    same SNI, rule and words. Its verdict is checked again here (fail closed if they differ)."""
    verdict = ended.verdict
    if verdict == Verdict.CLOSED:
        raise Refused(0, "airlock.sni", "closed before the TLS ClientHello")
    if verdict == Verdict.TIMED_OUT:
        raise TimeoutError
    if verdict == Verdict.FAILED:
        raise OSError(0, ended.reason or "read failed")
    if verdict == Verdict.NONE:  # the relay closed before it judged (the proxy stopped)
        raise OSError(0, ended.reason or "closed: the proxy stopped")
    hello = ClientHello(tls=verdict != Verdict.NOT_TLS, sni=ended.sni)
    _check_hello(head, hello, attempt)  # raises for every refusing verdict
    if verdict != Verdict.ADMITTED:
        raise Refused(0, "airlock.sni", "the ClientHello was refused")  # unreachable
