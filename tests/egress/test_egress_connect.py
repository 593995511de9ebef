"""HTTPS through the egress proxy with real clients: curl and openssl s_client, a local HTTPS
server with a test CA. Allowed tunnels work; denied ones fail fast with 403 and an event; a
ClientHello whose SNI is not the CONNECT host is refused and recorded."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest
from tests.egress.conftest import Events, ProxyFactory, Resolver, decide_first
from tests.egress.servers import serve
from tests.support.tls_ca import LocalCA

from airlock.audit.keys import SigningKey
from airlock.egress import EgressProxy, EgressProxyError, start_egress_proxy
from airlock.errors import ExitCode
from airlock.gate.file import FileBackend
from airlock.gate.interface import approver
from airlock.policy import parse_policy

_ALLOW = """
network:
  allow:
    - {{id: site, host: allowed.test, ports: [{port}], local_addresses: true}}
    - {{id: ip-site, host: 127.0.0.1, ports: [{port}], local_addresses: true}}
    - {{id: not-local, host: remote.test, ports: [{port}]}}
"""


def _curl(
    proxy: EgressProxy, ca: LocalCA, url: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "20", "--cacert", str(ca.path),
         "--proxy", proxy.url, *extra, url],
        capture_output=True, text=True, timeout=30, check=False,
        env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip


@pytest.fixture
def https_port(ca: LocalCA, site_dir: Path):  # type: ignore[no-untyped-def]
    context = ca.server_context(["allowed.test", "other.test", "remote.test", "127.0.0.1"])
    with serve(directory=site_dir, tls=context) as server:
        yield server.server_address[1]


def test_allowed_host_is_tunnelled_and_recorded(
    start_proxy: ProxyFactory, events: Events, ca: LocalCA, https_port: int
) -> None:
    proxy = start_proxy(_ALLOW.format(port=https_port))
    done = _curl(proxy, ca, f"https://allowed.test:{https_port}/hello.txt")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hello through the proxy\n"
    [event] = events.wait_net(1)
    assert event["outcome"] == "allowed"
    assert event["rule_id"] == "site"
    assert (event["host"], event["port"], event["sni"]) == (
        "allowed.test",
        https_port,
        "allowed.test",
    )
    assert event["kind"] == "connect" and event["address"] == "127.0.0.1"
    assert event["bytes_up"] > 100 and event["bytes_down"] > len(done.stdout)
    assert "error" not in event


def test_denied_host_gets_403_naming_what_to_add(
    start_proxy: ProxyFactory, events: Events, resolver: Resolver, ca: LocalCA, https_port: int
) -> None:
    proxy = start_proxy(_ALLOW.format(port=https_port))
    done = _curl(proxy, ca, f"https://other.test:{https_port}/hello.txt")
    assert done.returncode == 56  # curl: CONNECT refused by the proxy
    assert "403" in done.stderr
    [event] = events.net()
    assert event["outcome"] == "denied" and event["rule_id"] == "airlock.default-deny"
    assert event["status"] == 403 and event["bytes_down"] == 0

    with socket.create_connection((proxy.host, proxy.port)) as sock:
        sock.sendall(f"CONNECT other.test:{https_port} HTTP/1.1\r\n\r\n".encode())
        answer = _read_all(sock).decode()
    assert answer.startswith("HTTP/1.1 403 ")
    assert "network.allow" in answer and f"host: other.test, ports: [{https_port}]" in answer
    assert resolver.asked == []  # a denied name is never looked up: no DNS exfiltration


def test_name_resolving_to_loopback_needs_local_addresses(
    start_proxy: ProxyFactory, events: Events, ca: LocalCA, https_port: int
) -> None:
    proxy = start_proxy(_ALLOW.format(port=https_port))
    done = _curl(proxy, ca, f"https://remote.test:{https_port}/hello.txt")
    assert done.returncode == 56
    [event] = events.net()
    assert event["rule_id"] == "airlock.local-address" and event["outcome"] == "denied"
    assert "local_addresses: true" in event["error"]


@pytest.mark.parametrize(
    ("network", "allowed"),
    [
        ("allow: [{{id: n, host: allowed.test, ports: [{port}], local_addresses: true}}]", False),
        ("allow: [{{id: n, host: '127.0.0.1', ports: [{port}], local_addresses: true}}]", True),
        ("allow: [{{id: n, host: '127.0.0.1', ports: [{port}]}}]", False),
    ],
)
def test_ip_literal_needs_a_rule_naming_it(
    start_proxy: ProxyFactory,
    events: Events,
    ca: LocalCA,
    https_port: int,
    network: str,
    allowed: bool,
) -> None:
    proxy = start_proxy("network: {" + network.format(port=https_port).replace("{{", "{") + "}")
    done = _curl(proxy, ca, f"https://127.0.0.1:{https_port}/hello.txt")
    assert (done.returncode == 0) is allowed, done.stderr
    [event] = events.wait_net(1)
    assert event["outcome"] == ("allowed" if allowed else "denied")


def _s_client(
    proxy: EgressProxy, ca: LocalCA, target: str, *sni: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "s_client", "-proxy", f"{proxy.host}:{proxy.port}", "-connect", target,
         "-CAfile", str(ca.path), "-verify_return_error", *sni],
        input="", capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("sni", "recorded", "error"),
    [
        (["-servername", "other.test"], "other.test", "SNI other.test differs"),
        (["-noservername"], None, "no SNI in the ClientHello for allowed.test"),
    ],
)
def test_sni_must_be_the_connect_host(
    start_proxy: ProxyFactory,
    events: Events,
    ca: LocalCA,
    https_port: int,
    sni: list[str],
    recorded: str | None,
    error: str,
) -> None:
    proxy = start_proxy(_ALLOW.format(port=https_port))
    done = _s_client(proxy, ca, f"allowed.test:{https_port}", *sni)
    assert done.returncode != 0
    assert "BEGIN CERTIFICATE" not in done.stdout  # no server certificate ever came back
    [event] = events.net()
    assert event["outcome"] == "denied" and event["rule_id"] == "airlock.sni"
    assert event["sni"] == recorded and error in event["error"]
    assert event["bytes_down"] == 0


def test_matching_sni_with_openssl_works(
    start_proxy: ProxyFactory, events: Events, ca: LocalCA, https_port: int
) -> None:
    proxy = start_proxy(_ALLOW.format(port=https_port))
    done = _s_client(proxy, ca, f"allowed.test:{https_port}", "-servername", "allowed.test")
    assert "Verify return code: 0 (ok)" in done.stdout, done.stderr
    proxy.close()
    assert [e["outcome"] for e in events.net()] == ["allowed"]


def test_plain_bytes_in_a_tunnel_are_refused(
    start_proxy: ProxyFactory, events: Events, https_port: int
) -> None:
    proxy = start_proxy(_ALLOW.format(port=https_port))
    with socket.create_connection((proxy.host, proxy.port)) as sock:
        sock.sendall(f"CONNECT allowed.test:{https_port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        sock.sendall(b"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n")
        answer = _read_all(sock)
    assert answer == b"HTTP/1.1 200 Connection established\r\n\r\n"  # and then closed
    [event] = events.net()
    assert event["rule_id"] == "airlock.sni" and "not a TLS ClientHello" in event["error"]


def test_close_ends_open_tunnels_and_records_them(
    start_proxy: ProxyFactory, events: Events, ca: LocalCA, https_port: int
) -> None:
    proxy = start_proxy(_ALLOW.format(port=https_port))
    sock = socket.create_connection((proxy.host, proxy.port))
    sock.sendall(f"CONNECT allowed.test:{https_port} HTTP/1.1\r\n\r\n".encode())
    assert sock.recv(100).startswith(b"HTTP/1.1 200")
    context = ssl.create_default_context(cafile=str(ca.path))
    with context.wrap_socket(sock, server_hostname="allowed.test") as tls:
        assert tls.version() is not None
        assert events.net() == []  # still open: recorded when it ends
        proxy.close()
        assert tls.recv(10) == b""
    [event] = events.net()
    assert event["outcome"] == "allowed" and event["error"] == "closed: the proxy stopped"


def _read_all(sock: socket.socket) -> bytes:
    sock.settimeout(20)
    chunks = []
    while data := sock.recv(65536):
        chunks.append(data)
    return b"".join(chunks)


def test_a_taken_port_fails_closed_with_85(events: Events) -> None:
    network = parse_policy("network: {allow: [{id: a, host: a.test}]}").network
    assert network is not None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(EgressProxyError) as caught:
            start_egress_proxy(network, record=events, approve=None, listen=("127.0.0.1", port))
    assert caught.value.exit_code == ExitCode.UNAVAILABLE
    assert f"127.0.0.1:{port}" in str(caught.value)


def test_require_approval_holds_a_tunnel_until_approved(
    tmp_path: Path, start_proxy: ProxyFactory, events: Events, ca: LocalCA, https_port: int
) -> None:
    network = (
        f"network: {{allow: [{{id: ask, host: allowed.test, ports: [{https_port}], "
        "local_addresses: true, action: require_approval}]}"
    )
    approve = approver(FileBackend(tmp_path, key=SigningKey.generate(), record=events), 30)
    proxy = start_proxy(network, approve=approve)
    decider = threading.Thread(target=decide_first, args=(tmp_path, True))
    decider.start()
    done = _curl(proxy, ca, f"https://allowed.test:{https_port}/hello.txt")
    decider.join()
    assert done.stdout == "hello through the proxy\n", done.stderr
    [event] = events.wait_net(1)
    assert event["outcome"] == "approved" and event["rule_id"] == "ask"
    [requested] = [d for k, d in events.items if k == "approval.requested"]
    assert requested["operation"]["text"] == f"CONNECT allowed.test:{https_port}"
