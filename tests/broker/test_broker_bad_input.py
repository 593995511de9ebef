"""Bad input never gets a 500: every route answers 4xx with a reason code, changes nothing and
logs no traceback. Over real sockets against the broker under uvicorn."""

from __future__ import annotations

import json
import logging
import resource
import select
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.broker.approvals_support import (
    AUDIENCE,
    add_job,
    build_broker,
    github_headers,
    github_subject,
)
from tests.support.broker_server import BrokerServer
from tests.support.oidc_issuer import OIDCIssuer, b64url

from airlock.broker.app import create_app
from airlock.broker.service import Broker

ROUTES = [
    ("POST", "/v1/exchange"),
    ("POST", "/v1/revoke"),
    ("POST", "/v1/sessions/s-1/checkpoints"),
    ("GET", "/v1/sessions/s-1/checkpoints"),
    ("POST", "/v1/approvals"),
    ("GET", "/v1/approvals/0123456789abcdef0123456789abcdef"),
    ("POST", "/v1/webhooks/github"),
    ("POST", "/v1/webhooks/gitlab"),
    ("POST", "/v1/gateway-tickets"),
    ("POST", "/v1/gateway-tickets/check"),
]


@dataclass
class Stack:
    broker: Broker
    url: str
    job: str

    def counts(self) -> dict[str, int]:
        """Rows per table: the broker's whole state, as far as a request could change it."""
        engine = self.broker.store.engine
        tables = sa.inspect(engine).get_table_names()
        with engine.connect() as conn:
            return {
                t: int(conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one())
                for t in tables
                if t != "airlock_rates"
            }


@pytest.fixture(scope="module")
def stack(issuer: OIDCIssuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("bad-input")
    broker, store = build_broker(issuer.url, f"sqlite:///{tmp / 'b.db'}")
    with BrokerServer(create_app(broker)) as server:
        yield Stack(broker, server.url, add_job(broker, github_subject()))
    broker.close()
    store.close()


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def _send(stack: Stack, method: str, path: str, body: bytes, headers: dict[str, Any]) -> int:
    response = httpx.request(
        method, stack.url + path, content=body or None, headers=headers, timeout=30
    )
    assert response.headers.get("content-type", "").startswith("application/json")
    if response.status_code >= 400:
        assert response.json().get("error") or response.json().get("result")
    return response.status_code


@pytest.fixture
def no_tracebacks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    with caplog.at_level(logging.INFO):
        yield
    crashes = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert crashes == []


@pytest.mark.parametrize(
    ("method", "path"), [r for r in ROUTES if r[0] == "POST" and r[1] != "/v1/revoke"]
)
def test_deeply_nested_json_is_a_400_on_every_route(
    stack: Stack, method: str, path: str, no_tracebacks: None
) -> None:
    before = stack.counts()
    body = _nested(2000)  # 4,000 bytes: under every cap, past the recursion limit
    headers = {"Authorization": f"Bearer {stack.job}", "Content-Type": "application/json"}
    if path.endswith("/github"):
        headers = github_headers(body, event="check_run")
    if path.endswith("/gitlab"):
        headers["X-Gitlab-Token"] = "gl-hook-secret-test"
        headers["Idempotency-Key"] = "deep-1"
    assert _send(stack, method, path, body, headers) == 400
    assert stack.counts() == before


def test_a_jwt_header_nested_deeply_is_a_401(stack: Stack, no_tracebacks: None) -> None:
    header = b64url(_nested(5000))  # a 13 KB token: under the 16 KiB cap
    token = f"{header}.{b64url(b'{}')}.c2ln"
    response = httpx.post(f"{stack.url}/v1/exchange", json={"token": token}, timeout=30)
    assert response.status_code == 401
    assert response.json()["error"] == "malformed"


def test_an_exp_too_large_for_a_float_is_a_401(
    stack: Stack, issuer: OIDCIssuer, no_tracebacks: None
) -> None:
    claims = issuer.github_claims(AUDIENCE, exp=10**400)
    response = httpx.post(
        f"{stack.url}/v1/exchange", json={"token": issuer.mint(claims)}, timeout=30
    )
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "bad-claim-type"


def test_a_non_ascii_webhook_signature_is_a_401(stack: Stack, no_tracebacks: None) -> None:
    raw = json.dumps({"action": "requested_action"}).encode()
    headers = github_headers(raw, event="check_run")
    headers["X-Hub-Signature-256"] = "sha256=\u00e9\u00e9".encode("latin-1")  # type: ignore[assignment]
    response = httpx.post(f"{stack.url}/v1/webhooks/github", content=raw, headers=headers)
    assert response.status_code == 401
    assert response.json()["result"] == "bad-signature"


def test_a_256_mib_body_is_refused_before_it_is_read(stack: Stack) -> None:
    """Chunked (no Content-Length): the broker stops reading at the cap; memory stays flat."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    url = urlsplit(stack.url)
    chunk = b"x" * (1 << 20)
    sent = 0
    with socket.create_connection((url.hostname, url.port or 80), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/gateway-tickets HTTP/1.1\r\nHost: broker\r\n"
            b"Authorization: Bearer some-job-token\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        try:
            while sent < 256 << 20 and not select.select([sock], [], [], 0)[0]:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except OSError:
            pass  # the broker answered and closed while we were still sending
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 256 << 20  # it answered before the body was through
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 64


_JUNK_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats()
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=20,
)
_BODIES = st.one_of(
    st.binary(max_size=300),
    st.integers(min_value=1, max_value=5000).map(_nested),
    _JUNK_JSON.map(lambda v: json.dumps(v).encode()),
    st.sampled_from([b"1" * 5000, b"1e99999", b"-0", b'"\\ud800"', b"\xff\xfe", b"{" * 50]),
)
_ODD = st.sampled_from(
    [b"", b"Bearer", b"Bearer \xe9\xe9", b"bearer  x", b"Basic abc", b"\xff" * 20]
)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    route=st.sampled_from(ROUTES),
    body=_BODIES,
    auth=st.one_of(st.just(b"job"), _ODD),
    signature=_ODD,
    content_type=st.sampled_from([b"application/json", b"text/plain", b"\xe9"]),
)
def test_random_input_on_every_route_is_4xx_and_changes_nothing(
    stack: Stack,
    route: tuple[str, str],
    body: bytes,
    auth: bytes,
    signature: bytes,
    content_type: bytes,
) -> None:
    before = stack.counts()
    method, path = route
    if path == "/v1/revoke" and auth == b"job":
        auth = b"Bearer another-job"  # a valid token would rightly revoke (200)
    headers: dict[str, Any] = {
        "Authorization": f"Bearer {stack.job}".encode() if auth == b"job" else auth,
        "X-Hub-Signature-256": signature,
        "X-Gitlab-Token": signature,
        "X-GitHub-Event": b"check_run",
        "X-GitHub-Delivery": b"d-1",
        "Content-Type": content_type,
    }
    headers = {k: v for k, v in headers.items() if v}
    status = _send(stack, method, path, body if method == "POST" else b"", headers)
    assert 400 <= status < 500 or (method == "GET" and status == 200)
    assert stack.counts() == before


def test_the_property_test_sees_real_error_codes(stack: Stack) -> None:
    """Guard against a vacuous property: the same inputs give distinct, documented codes."""
    codes = set()
    for body in (b"not json", _nested(2000), b'{"gateway": 1}'):
        response = httpx.post(
            f"{stack.url}/v1/gateway-tickets",
            content=body,
            headers={"Authorization": f"Bearer {stack.job}"},
        )
        codes.add(response.json()["error"])
    assert codes == {"not-json", "too-deep", "bad-request"}
