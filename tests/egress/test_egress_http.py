"""Plain HTTP through the egress proxy (absolute-form requests) with curl: method and path rules,
hop-by-hop headers, Host taken from the URL, one request per connection; and approval rules
with the existing file and deny gates."""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.egress.conftest import Events, ProxyFactory, decide_first
from tests.egress.servers import EchoHandler, serve

from airlock.audit.keys import SigningKey
from airlock.egress import EgressProxy
from airlock.gate.deny import DenyBackend
from airlock.gate.file import FileBackend
from airlock.gate.interface import approver

_RULES = """
network:
  allow:
    - {{id: pub-read, host: web.test, ports: [{port}], methods: [GET, HEAD], paths: ["/pub/**"],
       local_addresses: true}}
    - {{id: upload, host: web.test, ports: [{port}], methods: [POST], paths: ["/upload"],
       local_addresses: true}}
  deny:
    - {{id: no-secret, host: web.test, ports: [{port}], paths: ["/pub/secret/**"]}}
"""


_ASK = (
    "network: {allow: [{id: ask-first, host: web.test, ports: [PORT], local_addresses: true, "
    "action: require_approval}]}"
)


@pytest.fixture
def echo() -> Iterator[tuple[int, list[str]]]:
    with serve(EchoHandler) as server:
        yield server.server_address[1], server.seen  # type: ignore[attr-defined]


def _curl(proxy: EgressProxy, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "20", "--proxy", proxy.url, *extra, url],
        capture_output=True, text=True, timeout=30, check=False, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip


def test_allowed_method_and_path_are_forwarded(
    start_proxy: ProxyFactory, events: Events, echo: tuple[int, list[str]]
) -> None:
    port, seen = echo
    proxy = start_proxy(_RULES.format(port=port))
    done = _curl(
        proxy, f"http://web.test:{port}/pub/a/b.txt?x=1", "-H", "Proxy-Authorization: Basic eA=="
    )
    assert done.returncode == 0, done.stderr
    assert (
        done.stdout == f"GET /pub/a/b.txt?x=1 web.test:{port} 0\n"
    )  # Host from the URL, no proxy auth
    assert seen == ["GET /pub/a/b.txt?x=1"]
    [event] = events.wait_net(1)
    assert event["kind"] == "http" and event["outcome"] == "allowed"
    assert (event["method"], event["path"], event["rule_id"]) == ("GET", "/pub/a/b.txt", "pub-read")
    assert event["status"] == 200 and event["bytes_down"] > len(done.stdout)


@pytest.mark.parametrize(
    ("args", "path", "rule"),
    [
        (["-X", "DELETE"], "/pub/a", "airlock.default-deny"),
        ([], "/private/a", "airlock.default-deny"),
        ([], "/pub/secret/key", "no-secret"),
        (["-d", "x=1"], "/pub/a", "airlock.default-deny"),
        (["--path-as-is"], "/pub/../private/a", "airlock.default-deny"),
        (["--path-as-is"], "/pub/%2e%2e/private/a", "airlock.default-deny"),
        (["--path-as-is"], "/pub/x/..//secret/key", "no-secret"),
        ([], "/pub/secret%2Fkey", "no-secret"),
    ],
)
def test_denied_method_or_path_gets_403_and_never_reaches_the_server(
    start_proxy: ProxyFactory,
    events: Events,
    echo: tuple[int, list[str]],
    args: list[str],
    path: str,
    rule: str,
) -> None:
    port, seen = echo
    proxy = start_proxy(_RULES.format(port=port))
    done = _curl(proxy, f"http://web.test:{port}{path}", "-w", "%{http_code}", *args)
    assert done.stdout.endswith("403")
    assert f"rule {rule!r}" in done.stdout or "network.allow" in done.stdout
    assert seen == []
    [event] = events.net()
    assert event["outcome"] == "denied" and event["rule_id"] == rule


def test_chunked_upload_is_framed_and_a_smuggled_second_request_is_dropped(
    start_proxy: ProxyFactory, events: Events, echo: tuple[int, list[str]]
) -> None:
    port, seen = echo
    proxy = start_proxy(_RULES.format(port=port))
    with socket.create_connection((proxy.host, proxy.port)) as sock:
        sock.sendall(
            f"POST http://web.test:{port}/upload HTTP/1.1\r\nHost: evil.test\r\n"
            "Content-Length: 5\r\n\r\nhello"
            f"DELETE http://web.test:{port}/pub/x HTTP/1.1\r\nHost: web.test\r\n\r\n".encode()
        )
        answer = _read_all(sock).decode()
    assert answer.startswith("HTTP/1.1 200 ") and "Connection: close" in answer
    assert answer.endswith(f"POST /upload web.test:{port} 5\n")
    assert seen == ["POST /upload"]  # the DELETE never left the proxy
    done = _curl(proxy, f"http://web.test:{port}/upload", "-H", "Transfer-Encoding: chunked",
                 "--data-binary", "x" * 5000)  # fmt: skip
    assert done.returncode == 0 and seen == ["POST /upload", "POST /upload"]
    assert [e["outcome"] for e in events.wait_net(2)] == ["allowed", "allowed"]


def test_https_url_in_a_plain_request_is_refused(start_proxy: ProxyFactory, events: Events) -> None:
    proxy = start_proxy("network: {allow: [{id: a, host: web.test}]}")
    with socket.create_connection((proxy.host, proxy.port)) as sock:
        sock.sendall(b"GET https://web.test/ HTTP/1.1\r\n\r\n")
        answer = _read_all(sock).decode()
    assert answer.startswith("HTTP/1.1 400 ") and "use CONNECT for https" in answer
    [event] = events.net()
    assert event["rule_id"] == "airlock.bad-request"


@pytest.mark.parametrize("verdict", [True, False])
def test_require_approval_waits_for_the_file_gate(
    tmp_path: Path,
    start_proxy: ProxyFactory,
    events: Events,
    echo: tuple[int, list[str]],
    verdict: bool,
) -> None:
    port, seen = echo
    network = _ASK.replace("PORT", str(port))
    approve = approver(FileBackend(tmp_path, key=SigningKey.generate(), record=events), 30)
    proxy = start_proxy(network, approve=approve)
    decider = threading.Thread(target=decide_first, args=(tmp_path, verdict))
    decider.start()
    done = _curl(proxy, f"http://web.test:{port}/pub/x", "-w", " %{http_code}")
    decider.join()
    assert done.stdout.endswith(" 200" if verdict else " 403")
    assert seen == (["GET /pub/x"] if verdict else [])
    events.wait_net(1)
    kinds = [k for k, _ in events.items]
    assert kinds == ["approval.requested", "approval.decided", "net.connect"]
    requested = events.items[0][1]
    assert requested["operation"]["text"] == f"GET http://web.test:{port}/pub/x"
    assert requested["operation"]["rule_id"] == "ask-first"
    [event] = events.net()
    assert event["outcome"] == ("approved" if verdict else "denied")
    assert event["rule_id"] == "ask-first"


def test_require_approval_with_the_deny_gate_or_none_is_refused(
    start_proxy: ProxyFactory, events: Events, echo: tuple[int, list[str]]
) -> None:
    port, seen = echo
    network = _ASK.replace("PORT", str(port))
    deny = approver(DenyBackend(key=SigningKey.generate(), record=events), 30)
    for approve in (deny, None):
        proxy = start_proxy(network, approve=approve)
        done = _curl(proxy, f"http://web.test:{port}/pub/x", "-w", " %{http_code}")
        assert done.stdout.endswith(" 403") and "was not approved" in done.stdout
    assert seen == []
    assert [e["outcome"] for e in events.net()] == ["denied", "denied"]
    assert [k for k, _ in events.items].count("approval.decided") == 1


def _read_all(sock: socket.socket) -> bytes:
    sock.settimeout(20)
    chunks = []
    while data := sock.recv(65536):
        chunks.append(data)
    return b"".join(chunks)
