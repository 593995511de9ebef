"""Attacks on the broker's HTTP layer, before any route runs: a request head without end.

uvicorn's httptools protocol buffers a header or URL of any size (llhttp sets no limit): one
unauthenticated connection could grow the broker by hundreds of MiB. The real `airlock broker
serve` process must cut it off and keep serving.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.broker.conftest import broker_yaml
from tests.support.broker_server import start_broker_process
from tests.support.oidc_issuer import OIDCIssuer


@pytest.fixture
def served(issuer: OIDCIssuer, tmp_path: Path) -> Iterator[str]:
    config = tmp_path / "broker.yaml"
    config.write_text(broker_yaml(issuer.url, f"sqlite:///{tmp_path / 'state.db'}"))
    proc, url = start_broker_process(["broker", "serve", "--config", str(config)], tmp_path)
    yield url
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)


def _endless_head(url: str, opening: bytes) -> tuple[int, bytes]:
    """Send ``opening`` then up to 64 MiB more of it; return (MiB sent, what came back)."""
    host, port = url.removeprefix("http://").split(":")
    chunk = b"a" * (1 << 20)
    sent = 0
    with socket.create_connection((host, int(port))) as sock:
        sock.settimeout(10)
        try:
            sock.sendall(opening)
            for sent in range(1, 65):  # noqa: B007 (the count is the result)
                sock.sendall(chunk)
        except OSError:  # the broker closed the connection: what did it say?
            pass
        try:
            answer = sock.recv(4096)
        except OSError:
            answer = b""
    return sent, answer


@pytest.mark.parametrize(
    "opening",
    [b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ", b"GET /healthz?"],
    ids=["header", "url"],
)
def test_an_endless_request_head_is_cut_off_and_the_broker_keeps_serving(
    served: str, opening: bytes
) -> None:
    sent, answer = _endless_head(served, opening)
    assert sent < 64, "the broker read 64 MiB of request head"
    assert answer.startswith(b"HTTP/1.1 431"), answer[:80]
    assert httpx.get(f"{served}/healthz", timeout=10).status_code == 200


def test_large_but_bounded_heads_and_bodies_still_work(served: str) -> None:
    headers = {"X-Pad": "p" * 32 * 1024}
    assert httpx.get(f"{served}/healthz", headers=headers, timeout=10).status_code == 200
    r = httpx.post(f"{served}/v1/exchange", content=b"{" + b" " * 300_000 + b"}", timeout=10)
    assert r.status_code in (400, 401, 413)
