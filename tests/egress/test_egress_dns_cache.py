"""The proxy keeps an allowed name's answer ``RESOLVE_TTL`` seconds: a burst of connections to one
host costs one lookup, failures are asked again, and a kept answer is judged like a fresh one
(a name that resolves to loopback stays refused on every connection)."""

from __future__ import annotations

import asyncio
import socket

import pytest
from tests.egress.conftest import Events, ProxyFactory, Resolver

from airlock.egress.proxy import CachedResolve


class _Counting:
    def __init__(self, answers: list[list[str] | OSError]) -> None:
        self.answers = answers
        self.calls = 0

    async def __call__(self, host: str, port: int) -> list[str]:
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        if isinstance(answer, OSError):
            raise answer
        return answer


def test_answers_kept_for_the_ttl_then_asked_again() -> None:
    now = [100.0]
    inner = _Counting([["192.0.2.1"], ["192.0.2.2"]])
    cached = CachedResolve(inner, ttl=30.0, clock=lambda: now[0])

    async def lookups() -> list[list[str]]:
        found = [await cached("a.example", 443), await cached("a.example", 443)]
        now[0] += 29.9
        found.append(await cached("a.example", 443))
        now[0] += 0.2  # past the 30 s
        found.append(await cached("a.example", 443))
        return found

    assert asyncio.run(lookups()) == [["192.0.2.1"]] * 3 + [["192.0.2.2"]]
    assert inner.calls == 2


def test_failures_and_empty_answers_are_not_kept() -> None:
    inner = _Counting([OSError("no such name"), [], ["192.0.2.1"]])
    cached = CachedResolve(inner, ttl=30.0)

    async def lookups() -> list[str]:
        with pytest.raises(OSError, match="no such name"):
            await cached("b.example", 443)
        assert await cached("b.example", 443) == []
        return await cached("b.example", 443)

    assert asyncio.run(lookups()) == ["192.0.2.1"]
    assert inner.calls == 3


def _connect(port: int, host: str, target_port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(f"CONNECT {host}:{target_port} HTTP/1.1\r\n\r\n".encode())
        answer = b""
        while data := sock.recv(4096):
            answer += data
        return answer


def test_a_kept_loopback_answer_is_refused_every_time(
    start_proxy: ProxyFactory, events: Events, resolver: Resolver
) -> None:
    proxy = start_proxy("network: {allow: [{id: far, host: remote.test, ports: [443]}]}")
    answers = [_connect(proxy.port, "remote.test", 443) for _ in range(3)]
    assert all(a.startswith(b"HTTP/1.1 403") for a in answers), answers
    assert resolver.asked == ["remote.test"]  # one lookup for the three
    assert [e["rule_id"] for e in events.wait_net(3)] == ["airlock.local-address"] * 3
