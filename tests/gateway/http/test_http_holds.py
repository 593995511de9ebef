"""Requests held for approval: they die with their client, end with the session, say why they
were refused, and one approval lets exactly the approved request through once (issue 12)."""

from __future__ import annotations

import gc
import logging
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.gateway.http.conftest import GatewayFactory, Recorder
from tests.gateway.http.servers import ThreadedServer, serving

from airlock.audit import SigningKey
from airlock.gate import FileBackend, approver, decide, pending
from airlock.gate.github_environment import PlanApplyBackend, PlanBackend
from airlock.gateway.tickets import Ticket
from airlock.mask import Masker, MaskSettings

HOLD_DELETE = [
    {"id": "hold-items", "http": {"methods": ["DELETE"], "path": "/items/*"},
     "action": "require_approval"}
]  # fmt: skip


class Seen:
    """An upstream that answers 200 and remembers every request that reached it."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.requests.append((scope["method"], scope["path"]))
        body = b'{"ok": true}'
        headers = [(b"content-type", b"application/json"), (b"content-length", b"12")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
def seen() -> Iterator[tuple[Seen, ThreadedServer]]:
    app = Seen()
    with serving(app) as server:
        yield app, server


def _until(check: Callable[[], Any], what: str, *, must: bool = True) -> Any:
    for _ in range(1000):
        if found := check():
            return found
        threading.Event().wait(0.01)
    if must:
        raise AssertionError(f"gave up waiting for {what}")
    return None


def _auth(ticket: Ticket) -> dict[str, str]:
    return {"Authorization": f"Bearer {ticket.value}"}


def _file_backend(tmp_path: Path, recorder: Recorder) -> FileBackend:
    backend = FileBackend(tmp_path, key=SigningKey.generate(), record=recorder)
    backend.poll_interval = 0.02
    return backend


def test_a_held_delete_dies_with_its_killed_curl(
    make_gateway: GatewayFactory,
    ticket: Ticket,
    recorder: Recorder,
    tmp_path: Path,
    seen: tuple[Seen, ThreadedServer],
) -> None:
    app, upstream = seen
    backend = _file_backend(tmp_path, recorder)
    gw = make_gateway(upstream_url=upstream.url, rules=HOLD_DELETE, approve=approver(backend, 60))
    curl = subprocess.Popen(
        ["curl", "-sS", "-X", "DELETE", "-H", f"Authorization: Bearer {ticket.value}",
         f"{gw.url}/items/1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    request = _until(lambda: list(pending(tmp_path)), "the held request")[0]
    curl.send_signal(signal.SIGKILL)
    curl.wait(10)
    # not required here: a gateway that misses the disconnect fails below, where it matters
    _until(lambda: recorder.of("approval.cancelled"), "approval.cancelled", must=False)
    decide(tmp_path, str(request["request_id"]), approved=True, by="alice")  # too late
    response = _until(lambda: recorder.of("http.response"), "the held request's outcome")[0]
    # the upstream serves another request: the held one, had it been sent, came first
    assert httpx.get(f"{gw.url}/after", headers=_auth(ticket)).status_code == 200
    assert app.requests == [("GET", "/after")]
    assert response["status"] == 499 and response["approval"] == "cancelled: client disconnected"
    cancelled = recorder.of("approval.cancelled")[0]
    assert (
        cancelled["approved"] is False and cancelled["reason"] == "cancelled: client disconnected"
    )
    assert backend.status(str(request["request_id"])).approved is False  # type: ignore[union-attr]
    types = [t for t, _ in recorder.events]
    assert types.index("approval.cancelled") < types.index("http.response")


def test_holds_pending_at_session_end_are_cancelled_and_recorded(
    make_gateway: GatewayFactory,
    ticket: Ticket,
    recorder: Recorder,
    tmp_path: Path,
    seen: tuple[Seen, ThreadedServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, upstream = seen
    gw = make_gateway(
        upstream_url=upstream.url,
        rules=HOLD_DELETE,
        approve=approver(_file_backend(tmp_path, recorder), 60),
    )
    result: dict[str, httpx.Response] = {}
    client = threading.Thread(
        target=lambda: result.setdefault(
            "r", httpx.delete(f"{gw.url}/items/1", headers=_auth(ticket), timeout=30)
        )
    )
    client.start()
    _until(lambda: list(pending(tmp_path)), "the held request")
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        gw.close()
        gc.collect()
    client.join(10)
    assert result["r"].status_code == 503
    assert "session ended" in result["r"].json()["error"]
    assert app.requests == []
    assert [t for t, _ in recorder.events if t.startswith("approval.")] == [
        "approval.requested",
        "approval.cancelled",
    ]
    assert recorder.of("approval.cancelled")[0]["reason"] == "cancelled: session ended"
    assert recorder.of("http.response")[0]["status"] == 503
    assert "Task was destroyed" not in caplog.text


def test_an_expired_approval_says_timed_out(
    make_gateway: GatewayFactory, ticket: Ticket, recorder: Recorder, tmp_path: Path
) -> None:
    gw = make_gateway(rules=HOLD_DELETE, approve=approver(_file_backend(tmp_path, recorder), 0.3))
    r = httpx.delete(f"{gw.url}/items/1", headers=_auth(ticket))
    assert r.status_code == 403 and r.json()["rule_id"] == "hold-items"
    assert "timed out" in r.json()["error"] and "denied" not in r.json()["error"]
    assert recorder.of("http.response")[0]["approval"] == "expired"


SECRET_A = "ghp_" + "A1b2C3d4E5" * 3 + "aaaaaa"
SECRET_B = "ghp_" + "A1b2C3d4E5" * 3 + "bbbbbb"


def test_one_approval_runs_exactly_the_approved_request_once(
    make_gateway: GatewayFactory,
    ticket: Ticket,
    recorder: Recorder,
    seen: tuple[Seen, ThreadedServer],
    tmp_path: Path,
) -> None:
    """The plan/apply backend approves each planned operation once, by its hash. Two requests
    whose queries mask alike must not share that hash, and the approved one runs once."""
    app, upstream = seen
    masker = Masker(MaskSettings())
    assert masker.mask_text(SECRET_A) == masker.mask_text(SECRET_B)  # they look the same
    planner = PlanBackend(tmp_path / "plan.json", key=SigningKey.generate())
    agent = make_gateway(
        upstream_url=upstream.url,
        rules=HOLD_DELETE,
        masker=masker,
        approve=approver(planner, 5, session_id="agent"),
    )
    planned = httpx.delete(f"{agent.url}/items/1?token={SECRET_A}", headers=_auth(ticket))
    assert planned.status_code == 403 and app.requests == []

    applier = PlanApplyBackend(planner.plan, key=SigningKey.generate())
    apply = make_gateway(
        upstream_url=upstream.url,
        rules=HOLD_DELETE,
        masker=masker,
        approve=approver(applier, 5, session_id="apply"),
    )
    other = httpx.delete(f"{apply.url}/items/1?token={SECRET_B}", headers=_auth(ticket))
    assert other.status_code == 403 and app.requests == []
    first = httpx.delete(f"{apply.url}/items/1?token={SECRET_A}", headers=_auth(ticket))
    again = httpx.delete(f"{apply.url}/items/1?token={SECRET_A}", headers=_auth(ticket))
    assert (first.status_code, again.status_code) == (200, 403)
    assert app.requests == [("DELETE", "/items/1")]
    assert SECRET_A not in recorder.text() and SECRET_B not in recorder.text()
