"""DNS rebinding: an allowed name pointed at a non-public address is refused, unless the rule
says ``local_addresses: true``. The attacker controls the DNS of a name a wildcard allows and
answers with the runner's internal network, the gateways' upstreams, or an IPv6 form of them.

The proxy's connect step is replaced by a recorder here, so that even a proxy without the check
(the old code) never connects beyond 127.0.0.1: the assertion is on the refusal and on the
absence of a connect attempt."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from tests.egress.conftest import Events

from airlock.egress import EgressProxy, connection, start_egress_proxy
from airlock.egress.addresses import parse_address, refused_reason
from airlock.policy import parse_policy

_REFUSED = [
    "10.1.2.3", "172.16.0.1", "172.31.255.254", "192.168.1.1",  # RFC 1918
    "100.64.0.1", "100.127.255.254",  # CGNAT
    "0.0.0.0", "0.1.2.3", "::",  # unspecified, "this network"
    "224.0.0.1", "239.1.2.3", "ff02::1", "ff0e::1",  # multicast (Python calls it global)
    "fc00::1", "fd12:3456::1",  # ULA
    "127.0.0.2", "::1", "169.254.169.254", "fe80::1", "fd00:ec2::254",  # loopback, metadata
    "168.63.129.16", "100.100.100.200",  # Azure WireServer, Alibaba metadata
    "::ffff:10.0.0.1", "::ffff:169.254.169.254",  # IPv4-mapped
    "::10.0.0.1", "::8.8.8.8",  # IPv4-compatible (deprecated)
    "::ffff:0:a00:1",  # SIIT
    "2002:a00:1::1", "2002:7f00:1::",  # 6to4 of 10.0.0.1, 127.0.0.1
    "64:ff9b::10.0.0.1", "64:ff9b::127.0.0.1", "64:ff9b::a9fe:a9fe",  # NAT64
    "64:ff9b:1::1",  # local-use NAT64
    "2001:0:4136:e378:8000:63bf:f5ff:fffe",  # Teredo
    "fec0::1", "192.0.2.1", "198.18.0.1", "240.0.0.1", "255.255.255.255", "2001:db8::1",
]  # fmt: skip
_PUBLIC = ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::8.8.8.8"]


@pytest.mark.parametrize("text", _REFUSED)
def test_non_public_addresses_are_refused(text: str) -> None:
    address = parse_address(text)
    assert address is not None
    assert refused_reason(address) is not None


@pytest.mark.parametrize("text", _PUBLIC)
def test_public_addresses_pass(text: str) -> None:
    address = parse_address(text)
    assert address is not None and refused_reason(address) is None


class _Rebinding:
    """The attacker's DNS: every name answers the address the test sets."""

    def __init__(self) -> None:
        self.answer = ["10.0.0.1"]

    async def __call__(self, host: str, port: int) -> list[str]:
        return list(self.answer)


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The addresses the proxy tried to connect to (it never does: refused with 502)."""
    tried: list[list[str]] = []

    async def recorder(addresses: list[str], port: int, *_: object) -> None:
        tried.append(addresses)
        raise connection._Refused(502, "test", "connect step replaced by the test")

    monkeypatch.setattr(connection, "_open", recorder)
    return tried


@pytest.fixture
def proxy_for(events: Events) -> Iterator[tuple[_Rebinding, list[EgressProxy]]]:
    dns, running = _Rebinding(), []
    yield dns, running
    for proxy in running:
        proxy.close()


def _start(network: str, dns: _Rebinding, events: Events, running: list[EgressProxy]) -> int:
    policy = parse_policy(network)
    assert policy.network is not None
    proxy = start_egress_proxy(policy.network, record=events, approve=None, resolve=dns)
    running.append(proxy)
    return int(proxy.port)


def _connect(port: int, target: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\n\r\n".encode())
        answer = b""
        while data := sock.recv(4096):
            answer += data
        return answer


@pytest.mark.parametrize(
    "answer",
    [["10.0.0.1"], ["192.168.0.10"], ["100.64.1.1"], ["fd00::5"], ["::ffff:172.17.0.1"],
     ["64:ff9b::a00:1"], ["2002:c0a8:1::1"], ["0.0.0.0"], ["8.8.8.8", "10.0.0.1"]],
)  # fmt: skip
def test_allowed_wildcard_rebound_to_internal_network_is_refused(
    proxy_for: tuple[_Rebinding, list[EgressProxy]],
    events: Events,
    connects: list[list[str]],
    answer: list[str],
) -> None:
    dns, running = proxy_for
    dns.answer = answer
    port = _start(
        "network: {allow: [{id: cdn, host: '*.cdn.example', ports: [443]}]}", dns, events, running
    )
    reply = _connect(port, "evil.cdn.example:443")
    assert reply.startswith(b"HTTP/1.1 403 "), reply
    assert b"local_addresses: true" in reply
    assert connects == []
    [event] = events.wait_net(1)
    assert (event["rule_id"], event["outcome"]) == ("airlock.local-address", "denied")


@pytest.mark.parametrize(("opt_in", "connected"), [(False, False), (True, True)])
def test_literal_private_ip_needs_the_opt_in_too(
    proxy_for: tuple[_Rebinding, list[EgressProxy]],
    events: Events,
    connects: list[list[str]],
    opt_in: bool,
    connected: bool,
) -> None:
    dns, running = proxy_for
    extra = ", local_addresses: true" if opt_in else ""
    network = f"network: {{allow: [{{id: db, host: '10.1.2.3', ports: [5432]{extra}}}]}}"
    reply = _connect(_start(network, dns, events, running), "10.1.2.3:5432")
    assert connects == ([["10.1.2.3"]] if connected else [])
    assert reply.startswith(b"HTTP/1.1 502 " if connected else b"HTTP/1.1 403 "), reply
