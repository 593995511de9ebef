"""The HTTP gateway against a real local upstream: tickets, credential injection, recording."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import socket
from typing import Any

import httpx
import pytest
from tests.gateway.http.conftest import TOKEN, GatewayFactory, Recorder
from tests.gateway.http.servers import SECRET_IN_RESPONSE

from airlock.gateway.tickets import Ticket


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _bearer(ticket: Ticket) -> dict[str, str]:
    return {"Authorization": f"Bearer {ticket.value}"}


def test_bearer_ticket_is_swapped_for_the_held_credential(
    make_gateway: GatewayFactory, ticket: Ticket, recorder: Recorder
) -> None:
    gw = make_gateway()
    r = httpx.get(f"{gw.url}/repos/acme/api?per_page=5", headers=_bearer(ticket))
    assert r.status_code == 200
    seen = r.json()
    assert seen["header_sha256"]["authorization"] == _sha(f"Bearer {TOKEN}")
    assert seen["headers"]["authorization"] == "Bearer [MASKED:gateway.api]"  # echo masked
    assert seen["path"] == "/repos/acme/api" and seen["query"] == "per_page=5"
    assert ticket.value not in json.dumps(seen)
    request, response = recorder.of("http.request")[0], recorder.of("http.response")[0]
    assert request["method"] == "GET" and request["path"] == "/repos/acme/api"
    assert request["query"] == "per_page=5"
    assert response["status"] == 200 and response["duration_ms"] > 0
    # size and hash are of what the upstream sent; the client got the echo masked
    assert response["size"] == len(r.content) - len("[MASKED:gateway.api]") + len(TOKEN)
    assert response["client_masked"] is True
    assert TOKEN not in recorder.text() and ticket.value not in recorder.text()


@pytest.mark.parametrize("scheme", ["basic", "proxy", "token"])
def test_other_ways_to_present_the_ticket(
    make_gateway: GatewayFactory, ticket: Ticket, scheme: str
) -> None:
    gw = make_gateway()
    if scheme == "basic":
        headers = {
            "Authorization": "Basic " + base64.b64encode(f"git:{ticket.value}".encode()).decode()
        }
    elif scheme == "proxy":
        headers = {"Proxy-Authorization": f"Bearer {ticket.value}"}
    else:
        headers = {"Authorization": f"token {ticket.value}"}
    r = httpx.get(f"{gw.url}/x", headers=headers)
    assert r.status_code == 200
    assert r.json()["header_sha256"]["authorization"] == _sha(f"Bearer {TOKEN}")
    assert "proxy-authorization" not in r.json()["headers"]


@pytest.mark.parametrize(
    ("headers", "status", "outcome"),
    [
        ({}, 401, "missing"),
        ({"Authorization": "Bearer wrong-ticket"}, 401, "wrong"),
        ({"Authorization": "Basic " + base64.b64encode(b"git:nope").decode()}, 401, "wrong"),
        ({"Authorization": "Basic !!!notbase64"}, 401, "wrong"),
        ({"Proxy-Authorization": "Bearer wrong"}, 407, "wrong"),
        ({"Authorization": f"Bearer {TOKEN}"}, 401, "wrong"),  # the upstream token is no ticket
    ],
)
def test_missing_or_wrong_ticket_is_refused_and_recorded(
    make_gateway: GatewayFactory,
    recorder: Recorder,
    headers: dict[str, str],
    status: int,
    outcome: str,
) -> None:
    gw = make_gateway()
    r = httpx.post(f"{gw.url}/danger", headers=headers, content=b"payload")
    assert r.status_code == status
    challenge = r.headers.get("www-authenticate" if status == 401 else "proxy-authenticate")
    assert challenge is not None and challenge.startswith("Basic")
    assert "ticket" in r.json()["error"]
    assert recorder.of("http.request")[0]["auth"] == outcome
    assert recorder.of("http.response")[0]["status"] == status
    assert TOKEN not in r.text


def test_ticket_of_another_gateway_is_refused(make_gateway: GatewayFactory) -> None:
    gw = make_gateway()
    other = Ticket.issue("session-1", "forge")
    assert httpx.get(f"{gw.url}/x", headers=_bearer(other)).status_code == 401


def test_client_auth_headers_never_reach_upstream(
    make_gateway: GatewayFactory, ticket: Ticket
) -> None:
    gw = make_gateway(credential={"header": {"name": "X-Api-Key", "value_env": "API_TOKEN"}})
    r = httpx.get(
        f"{gw.url}/x",
        headers={
            "Proxy-Authorization": f"Bearer {ticket.value}",
            "X-Api-Key": "agent-chosen",
            "Authorization": "Bearer sneaky",
        },
    )
    seen = r.json()["headers"]
    assert r.json()["header_sha256"]["x-api-key"] == _sha(TOKEN)
    assert "authorization" not in seen and "proxy-authorization" not in seen


def test_basic_credential(make_gateway: GatewayFactory, ticket: Ticket, recorder: Recorder) -> None:
    gw = make_gateway(
        credential={"env": {"basic_user": "U", "basic_password": "P"}},
        environ={"U": "x-access-token", "P": "basic-secret-pw-123"},
    )
    r = httpx.get(f"{gw.url}/x", headers=_bearer(ticket))
    expected = base64.b64encode(b"x-access-token:basic-secret-pw-123").decode()
    assert r.json()["header_sha256"]["authorization"] == _sha(f"Basic {expected}")
    assert expected not in r.text and "basic-secret-pw-123" not in r.text
    assert "basic-secret-pw-123" not in recorder.text() and expected not in recorder.text()


def test_no_credential_forwards_without_auth(make_gateway: GatewayFactory, ticket: Ticket) -> None:
    gw = make_gateway(credential=None, environ={})
    r = httpx.get(f"{gw.url}/x", headers=_bearer(ticket))
    assert "authorization" not in r.json()["headers"]


def test_missing_credential_variable_fails_at_start(make_gateway: GatewayFactory) -> None:
    from airlock.errors import ConfigError

    with pytest.raises(ConfigError, match="API_TOKEN is not set"):
        make_gateway(environ={})


def test_upstream_path_prefix_is_kept(
    make_gateway: GatewayFactory, upstream: object, ticket: Ticket
) -> None:
    gw = make_gateway(upstream_url=f"{upstream.url}/api/v3")  # type: ignore[attr-defined]
    assert httpx.get(f"{gw.url}/user", headers=_bearer(ticket)).json()["path"] == "/api/v3/user"


@pytest.mark.parametrize(
    ("sent", "upstream_path"),
    [
        ("/a/./b/../c", "/a/c"),
        ("/a//b///c", "/a/b/c"),
        ("/a/%2e%2e/b", "/b"),
        ("/projects/group%2Fproject/issues", "/projects/group%2Fproject/issues"),
        ("/%7Euser/x%20y", "/~user/x%20y"),
        ("/../../etc/passwd", "/etc/passwd"),
        ("/dir/", "/dir/"),
    ],
)
def test_paths_are_normalised_before_judging_and_forwarding(
    make_gateway: GatewayFactory, ticket: Ticket, sent: str, upstream_path: str
) -> None:
    gw = make_gateway()
    with httpx.Client() as client:
        request = client.build_request("GET", gw.url, headers=_bearer(ticket))
        request.url = request.url.copy_with(raw_path=sent.encode())
        r = client.send(request)
    assert r.json()["raw_path"] == upstream_path


def test_request_and_response_bodies_recorded_up_to_the_cap(
    make_gateway: GatewayFactory, ticket: Ticket, recorder: Recorder
) -> None:
    gw = make_gateway(record_bodies=16)
    r = httpx.post(
        f"{gw.url}/echo", headers=_bearer(ticket), content=b"0123456789abcdefXYZ-beyond-the-cap"
    )
    assert r.json()["body_size"] == 34
    request, response = recorder.of("http.request")[0], recorder.of("http.response")[0]
    assert request["body"] == "0123456789abcdef" and request["body_truncated"] is True
    assert response["request_body"]["size"] == 34
    assert len(response["body"]["body"]) == 16 and response["body"]["body_truncated"] is True
    assert response["body"]["size"] == response["size"] > 16


def test_record_bodies_zero_records_sizes_and_hashes_only(
    make_gateway: GatewayFactory, ticket: Ticket, recorder: Recorder
) -> None:
    gw = make_gateway(record_bodies=0)
    httpx.post(f"{gw.url}/echo", headers=_bearer(ticket), content=b"hello")
    response = recorder.of("http.response")[0]
    assert "body" not in recorder.of("http.request")[0] and response["request_body"]["size"] == 5
    import hashlib

    assert response["request_body"]["sha256"] == hashlib.sha256(b"hello").hexdigest()


def test_json_fields_and_secrets_masked_in_recorded_bodies(
    make_gateway: GatewayFactory, ticket: Ticket, recorder: Recorder
) -> None:
    gw = make_gateway(mask_json_fields=["password", "items.api_key"])
    r = httpx.get(f"{gw.url}/secret-json", headers=_bearer(ticket))
    assert r.json()["user"]["password"] == "hunter2-pass"  # the client gets the real response
    recorded = recorder.of("http.response")[0]["body"]["body"]
    doc = json.loads(recorded)
    assert doc["user"] == {"name": "ann", "password": "[MASKED:json-field]"}
    assert doc["items"] == [{"api_key": "[MASKED:json-field]"}]
    assert doc["token"].startswith("[MASKED:")  # the session masker's GitHub token rule
    assert SECRET_IN_RESPONSE not in recorder.text() and "hunter2-pass" not in recorder.text()


@pytest.mark.parametrize("cap", [4096, 64])
def test_json_unicode_escapes_are_decoded_before_masking(
    make_gateway: GatewayFactory, ticket: Ticket, recorder: Recorder, cap: int
) -> None:
    """``\\u0067hp_…`` is ``ghp_…`` to every JSON reader: the log must not keep it, whole or cut."""
    gw = make_gateway(record_bodies=cap)
    r = httpx.get(f"{gw.url}/escaped-json", headers=_bearer(ticket))
    assert json.loads(r.content)["token"] == SECRET_IN_RESPONSE  # the client gets it as sent
    body = recorder.of("http.response")[0]["body"]["body"]
    decoded = body.encode().decode("unicode_escape") if "\\u" in body else body
    assert SECRET_IN_RESPONSE[:12] not in decoded and "[MASKED:" in body
    if cap == 4096:  # escapes that JSON needs stay escaped; the rest reads as text
        assert json.loads(body) == {
            "token": json.loads(body)["token"],
            "quote": '"',
            "pair": "\U0001f600",
        }


def test_cut_json_is_not_recorded_when_fields_must_be_masked(
    make_gateway: GatewayFactory, ticket: Ticket, recorder: Recorder
) -> None:
    gw = make_gateway(mask_json_fields=["password"], record_bodies=48)
    httpx.get(f"{gw.url}/secret-json", headers=_bearer(ticket))
    body = recorder.of("http.response")[0]["body"]
    assert "body" not in body and "cut at the cap" in body["body_omitted"]
    assert "hunter2" not in recorder.text()


def test_cut_json_that_names_no_masked_field_is_recorded(
    make_gateway: GatewayFactory, ticket: Ticket, recorder: Recorder
) -> None:
    gw = make_gateway(mask_json_fields=["password"], record_bodies=20)
    httpx.get(f"{gw.url}/secret-json", headers=_bearer(ticket))
    body = recorder.of("http.response")[0]["body"]
    assert body["body"] == '{"user": {"name": "a' and body["body_truncated"] is True


def test_request_json_body_fields_masked(
    make_gateway: GatewayFactory, ticket: Ticket, recorder: Recorder
) -> None:
    gw = make_gateway(mask_json_fields=["*.secret"])
    httpx.post(
        f"{gw.url}/echo",
        headers=_bearer(ticket),
        json={"db": {"secret": "s3cr3t-value", "host": "h"}},
    )
    body = recorder.of("http.request")[0]["body"]
    assert json.loads(body) == {"db": {"secret": "[MASKED:json-field]", "host": "h"}}


def test_query_and_headers_masked(
    make_gateway: GatewayFactory, ticket: Ticket, recorder: Recorder
) -> None:
    gw = make_gateway()
    httpx.get(
        f"{gw.url}/search?q=x&access_token={SECRET_IN_RESPONSE}",
        headers={
            **_bearer(ticket),
            "User-Agent": f"agent {SECRET_IN_RESPONSE}",
            "X-Private": "not-allowlisted",
        },
    )
    request = recorder.of("http.request")[0]
    assert SECRET_IN_RESPONSE not in json.dumps(request)
    assert request["query"].startswith("q=x&access_token=[MASKED:")
    assert request["headers"]["user-agent"].startswith("agent [MASKED:")
    assert "x-private" not in request["headers"] and "authorization" not in request["headers"]


def test_gzip_response_recorded_decoded_and_relayed_raw(
    make_gateway: GatewayFactory, ticket: Ticket, recorder: Recorder
) -> None:
    gw = make_gateway()
    r = httpx.get(f"{gw.url}/gzip", headers=_bearer(ticket))
    assert r.json()["hello"].startswith("world")  # httpx decoded what the gateway relayed raw
    assert r.headers["content-encoding"] == "gzip"
    assert json.loads(recorder.of("http.response")[0]["body"]["body"])["hello"].startswith("world")


def test_binary_response_not_recorded_as_text(
    make_gateway: GatewayFactory, ticket: Ticket, recorder: Recorder
) -> None:
    gw = make_gateway()
    r = httpx.get(f"{gw.url}/binary", headers=_bearer(ticket))
    assert r.content == bytes(range(256)) * 4
    assert recorder.of("http.response")[0]["body"]["body_omitted"] == "binary"


def test_large_bodies_stream_both_ways(
    make_gateway: GatewayFactory, ticket: Ticket, recorder: Recorder
) -> None:
    gw = make_gateway(record_bodies=1024)
    size = 64 * 1024 * 1024

    def upload():  # type: ignore[no-untyped-def]
        chunk = b"y" * (1 << 20)
        for _ in range(size // len(chunk)):
            yield chunk

    with httpx.Client(timeout=60) as client:
        r = client.post(f"{gw.url}/echo", headers=_bearer(ticket), content=upload())
        assert r.json()["body_size"] == size
        with client.stream("GET", f"{gw.url}/stream/{size}", headers=_bearer(ticket)) as down:
            total = sum(len(c) for c in down.iter_raw())
    assert total == size
    sizes = [e["size"] for e in recorder.of("http.response")]
    assert sizes[1] == size
    assert recorder.of("http.response")[0]["request_body"]["size"] == size
    assert all(len(e["body"].get("body", "")) <= 1024 for e in recorder.of("http.response"))


def test_held_credential_echoed_by_the_upstream_is_masked_for_the_client(
    make_gateway: GatewayFactory, ticket: Ticket
) -> None:
    gw = make_gateway()
    r = httpx.get(f"{gw.url}/echo", headers={**_bearer(ticket), "Accept-Encoding": "gzip"})
    assert TOKEN not in r.text and "[MASKED:gateway.api]" in r.text
    # a small response is masked whole and sent with the masked body's own length
    assert r.headers["content-length"] == str(len(r.content))
    assert r.json()["headers"]["accept-encoding"] == "identity"  # so that it can be masked


@pytest.mark.parametrize(
    "fields",
    [
        {"record_bodies": 0},  # nothing recorded
        {"record_bodies": 64},  # recorded cut before the credential
        {"mask_json_fields": ["headers"]},  # the credential's field masked in the record
        {"record_bodies": 65536},  # recorded whole: the session masker finds it
    ],
)
def test_echo_is_masked_for_the_client_whatever_the_log_keeps(
    make_gateway: GatewayFactory, ticket: Ticket, recorder: Recorder, fields: dict[str, Any]
) -> None:
    """The client's copy is masked by its own scan unless the record is the whole body as it
    was and the session masker (which holds the credential too) found nothing in it."""
    gw = make_gateway(**fields)
    r = httpx.get(f"{gw.url}/echo", headers=_bearer(ticket))
    assert TOKEN not in r.text and "[MASKED:gateway.api]" in r.text
    assert r.headers["content-length"] == str(len(r.content))
    assert TOKEN not in json.dumps(recorder.of("http.response"))


def test_echo_masking_can_be_turned_off(make_gateway: GatewayFactory, ticket: Ticket) -> None:
    from airlock.gateway.http import ProxySettings

    gw = make_gateway(settings=ProxySettings(mask_held_in_responses=False))
    r = httpx.get(f"{gw.url}/echo", headers=_bearer(ticket))
    assert TOKEN in r.text and r.headers["content-length"] == str(len(r.content))


def test_small_request_body_recorded_whole(
    make_gateway: GatewayFactory, ticket: Ticket, recorder: Recorder
) -> None:
    gw = make_gateway()
    httpx.post(f"{gw.url}/echo", headers=_bearer(ticket), content=b"name=ann&role=dev")
    request = recorder.of("http.request")[0]
    assert request["body"] == "name=ann&role=dev" and request["body_truncated"] is False


def test_responses_stream_instead_of_being_buffered(
    make_gateway: GatewayFactory, ticket: Ticket
) -> None:
    """Ordering, not timing: the upstream sends its last piece only after the client has read
    the first one through the gateway. A buffering gateway never passes the first piece on, so
    the upstream gives up waiting (a generous bound, not a measurement) and says so."""
    import threading

    from tests.gateway.http.servers import serving

    first_seen = threading.Event()

    async def gated(scope: dict[str, object], receive: object, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = [(b"content-type", b"text/plain")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"first\n", "more_body": True})
        seen = await asyncio.to_thread(first_seen.wait, 30)
        last = b"last\n" if seen else b"gave up: the first piece never reached the client\n"
        await send({"type": "http.response.body", "body": last})

    with serving(gated) as upstream:
        gw = make_gateway(upstream_url=upstream.url)
        with httpx.stream("GET", f"{gw.url}/gated", headers=_bearer(ticket)) as r:
            pieces = r.iter_raw()
            received = next(p for p in pieces if p)
            first_seen.set()  # only now may the upstream finish
            received += b"".join(pieces)
    assert received == b"first\nlast\n"


@pytest.mark.parametrize("path", ["/echo", "/binary", "/stream/1000"])
def test_head_requests(
    make_gateway: GatewayFactory, ticket: Ticket, recorder: Recorder, path: str
) -> None:
    gw = make_gateway()
    r = httpx.head(f"{gw.url}{path}", headers=_bearer(ticket))
    assert r.status_code == 200 and r.content == b""
    assert recorder.of("http.response")[0]["status"] == 200
    assert httpx.get(f"{gw.url}/x", headers=_bearer(ticket)).status_code == 200  # connection fine


def test_credential_echoed_in_slow_pieces_is_still_masked(
    make_gateway: GatewayFactory, ticket: Ticket
) -> None:
    gw = make_gateway()
    r = httpx.get(f"{gw.url}/slow-echo", headers=_bearer(ticket))
    assert TOKEN not in r.text and TOKEN[:12] not in r.text
    assert "[MASKED:gateway.api]" in r.text


def test_every_socket_of_a_keep_alive_exchange_has_tcp_nodelay(
    make_gateway: GatewayFactory, ticket: Ticket
) -> None:
    """Without TCP_NODELAY each keep-alive response waits on Nagle and delayed ACKs (~40 ms)."""
    gw = make_gateway()

    async def nodelay() -> list[int]:
        # the client's connection as the gateway accepted it, and the gateway's upstream one
        accepted = gw.gateway._server.accepted()
        pool = gw.gateway._client
        upstream = [c.transport.get_extra_info("socket") for c in pool.connections()]  # type: ignore[attr-defined]
        assert accepted and upstream
        return [s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in accepted + upstream]

    with httpx.Client() as client:
        assert client.get(f"{gw.url}/x", headers=_bearer(ticket)).status_code == 200
        flags = asyncio.run_coroutine_threadsafe(nodelay(), gw._loop).result(5)
    assert flags and all(flags)


def test_a_secret_registered_mid_session_is_masked_in_headers_seen_before(
    make_gateway: GatewayFactory, ticket: Ticket, recorder: Recorder
) -> None:
    """Masked headers are remembered per header list, but never across a new secret."""
    from airlock.mask import Masker, MaskSettings

    masker = Masker(MaskSettings())
    gw = make_gateway(masker=masker)
    late = "late-secret-" + "z" * 24
    headers = {**_bearer(ticket), "User-Agent": f"agent/{late}"}
    with httpx.Client(headers=headers) as client:
        client.get(f"{gw.url}/echo")
        masker.add_secret(late, "late")
        client.get(f"{gw.url}/echo")
    first, second = (e["headers"]["user-agent"] for e in recorder.of("http.request"))
    assert first == f"agent/{late}" and second == "agent/[MASKED:late]"
