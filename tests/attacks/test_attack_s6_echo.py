"""Session 6 attacks on the HTTP gateway's echo-mask shortcut (a small text response that the
session masker recorded whole, unchanged and clean is not scanned again for the held credential).

The attacker's moves: the agent picks what the upstream sends back (an endpoint that echoes the
``Authorization`` header, a reflected parameter), so it tries every shape the response can take
around the shortcut: the credential raw, in an encoding the masker knows (base64, percent, JSON
``\\/``), split across TCP segments (the body not in with the head), chunked and split across
chunks, a body just under, at and just over the 64 KiB whole-response threshold, with the
record cut before the credential, recorded whole, or not recorded. The credential has ``+`` and
``/`` in it (as a base64 Basic pair or an AWS session token has), so its encodings differ from
it. Asserted from outside: the bytes the client received never hold the credential in any of
those forms, and a JSON body never decodes to it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from tests.gateway.http.conftest import Recorder
from tests.support.raw_http import RawUpstream

from airlock.gateway.http import ThreadedHttpGateway, start_in_thread
from airlock.gateway.tickets import Ticket
from airlock.mask import Masker, MaskSettings
from airlock.policy.gateways import HttpGatewayConfig

pytestmark = pytest.mark.service

TOKEN = "held+Tok/en-" + "Q7" * 12 + "+z/"
WHOLE = 64 * 1024


def _forms(value: str) -> list[bytes]:
    raw = value.encode()
    return [
        raw,
        base64.b64encode(raw),
        quote(value, safe="").encode(),
        json.dumps(value)[1:-1].replace("/", "\\/").encode(),
    ]


def _head(ctype: str, length: int | None) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\n{framing}\r\n\r\n".encode()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _padded(echo: bytes, size: int) -> bytes:
    """``echo`` at the end of a text body of exactly ``size`` bytes."""
    return b"x" * (size - len(echo) - 1) + b"\n" + echo


def _answer(path: str, auth: bytes) -> list[bytes]:
    """The upstream's response to ``path`` as pieces, sent with a pause between them."""
    token = auth.removeprefix(b"Bearer ")
    half = len(auth) // 2
    if path.startswith("/size/"):  # the echo at the end of a body of exactly this size
        body = _padded(auth, int(path.rsplit("/", 1)[1]))
        return [_head("text/plain", len(body)) + body]
    if path == "/split":  # the body's second half in a later TCP segment than the head
        return [_head("text/plain", len(auth)) + auth[:half], auth[half:]]
    if path.startswith("/split-edge/"):
        body = _padded(auth, int(path.rsplit("/", 1)[1]))
        cut = len(body) - half
        return [_head("text/plain", len(body)) + body[:cut], body[cut:]]
    if path == "/chunked":  # chunked, the credential cut across two chunks
        return [_head("text/plain", None) + _chunk(auth[:half]), _chunk(auth[half:]) + b"0\r\n\r\n"]
    if path == "/base64":
        body = b"seen: " + base64.b64encode(token)
        return [_head("text/plain", len(body)) + body]
    if path == "/percent":
        body = b"next=" + quote(token.decode(), safe="").encode()
        return [_head("application/x-www-form-urlencoded", len(body)) + body]
    if path == "/json-slash":  # PHP and some Java encoders write / as \/
        body = json.dumps({"auth": auth.decode()}).replace("/", "\\/").encode()
        return [_head("application/json", len(body)) + body]
    if path == "/dotnet":  # System.Text.Json's default encoder: + as \u002B
        text = json.dumps({"auth": auth.decode()}).replace("+", "\\u002B")
        return [_head("application/json; charset=utf-8", len(text)) + text.encode()]
    body = auth
    return [_head("text/plain", len(body)) + body]


class EchoUpstream(RawUpstream):
    """A raw HTTP/1.1 upstream (keep-alive) that echoes the Authorization it receives in the
    shape the request's path names (:func:`_answer`)."""

    def __init__(self) -> None:
        self.auth: list[bytes] = []
        super().__init__(self._echo)

    def _echo(self, n: int, message: dict[str, Any]) -> list[bytes]:
        auth = dict(message["headers"]).get(b"authorization", b"")
        self.auth.append(auth)
        return _answer(message["url"].decode(), auth)


@pytest.fixture(scope="module")
def echo_upstream() -> Iterator[EchoUpstream]:
    upstream = EchoUpstream()
    yield upstream
    upstream.close()


@pytest.fixture(scope="module", params=[0, 1024, WHOLE + 1024])
def gateway(request: pytest.FixtureRequest, echo_upstream: EchoUpstream) -> Iterator[Any]:
    """A gateway holding TOKEN, recording no body, a cut one, or any small body whole (then
    a clean record spares the client's echo scan)."""
    ticket = Ticket.issue("session-1", "api")
    config = HttpGatewayConfig.model_validate(
        {
            "name": "api",
            "kind": "http",
            "upstream": echo_upstream.url,
            "credential": {"env": {"bearer": "API_TOKEN"}},
            "record_bodies": request.param,
        }
    )
    recorder = Recorder()
    gw: ThreadedHttpGateway = start_in_thread(
        config,
        masker=Masker(MaskSettings()),
        record=recorder,
        approve=None,
        ticket=ticket,
        environ={"API_TOKEN": TOKEN},
    )
    with httpx.Client(
        base_url=gw.url, headers={"Authorization": f"Bearer {ticket.value}"}, timeout=10
    ) as client:
        yield client, recorder
    gw.close()


PATHS = [
    "/plain",
    "/size/200",
    f"/size/{WHOLE - 1}",
    f"/size/{WHOLE}",
    f"/size/{WHOLE + 1}",
    "/split",
    f"/split-edge/{WHOLE}",
    f"/split-edge/{WHOLE + 1}",
    "/chunked",
    "/base64",
    "/percent",
    "/json-slash",
]


@pytest.mark.parametrize("path", PATHS)
def test_the_held_credential_never_reaches_the_client_in_an_echo(
    gateway: Any, echo_upstream: EchoUpstream, path: str
) -> None:
    client, recorder = gateway
    before = len(echo_upstream.auth)
    r = client.get(path)
    assert r.status_code == 200
    assert echo_upstream.auth[before:] == [f"Bearer {TOKEN}".encode()]  # it was injected
    for form in _forms(TOKEN):
        assert form not in r.content, path
    assert b"[MASKED:gateway.api]" in r.content
    assert r.headers.get("content-length", str(len(r.content))) == str(len(r.content))
    if path == "/json-slash":
        assert TOKEN not in r.json()["auth"]
    assert recorder.of("http.response")[-1]["client_masked"] is True


def test_an_echo_written_by_a_dotnet_style_json_encoder_is_masked(gateway: Any) -> None:
    """.NET's System.Text.Json (its default encoder) and PHP's JSON_HEX_* flags write ``+``,
    ``'``, ``<``, ``>``, ``&`` and a backquote as upper-case ``\\u002B`` escapes: the client's
    JSON parser reads the credential back from them."""
    client, _ = gateway
    r = client.get("/dotnet")
    assert r.status_code == 200
    assert TOKEN not in r.json()["auth"]
