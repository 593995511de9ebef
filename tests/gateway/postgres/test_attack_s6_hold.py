"""Session 6 attack on holds over the PostgreSQL gateway's I/O paths (the compiled loop,
``_loop.c``, and asyncio's transports): holds die with their client, so a held statement is
never sent for a client that is gone.

The attacker's move: while its DROP is held, the agent pipelines more than the backlog the
gateway keeps for a held connection (``MAX_BACKLOG``), then closes the connection. The gateway
used to stop reading such a client (flow control); a paused socket's FIN is not seen, so the hold
outlived its client and an approver who answered later (a human, who cannot tell) let the DROP
run for nobody. Now such a client is disconnected and its held statement never sent.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any

import pytest
from tests.attacks.test_attack_postgres import _logged_in
from tests.gateway.postgres.conftest import MakeGateway, Upstream
from tests.gateway.postgres.test_issue12 import (
    _alive_after,
    _exists,
    _held_until_released,
    _never_sent,
    _wait_for,
)

from airlock.gateway.postgres import native
from airlock.gateway.postgres.encode import encode_query
from airlock.gateway.postgres.relay import MAX_BACKLOG, Relay, Step

pytestmark = pytest.mark.service


@pytest.mark.parametrize("io_path", ["compiled", "python"])
def test_a_held_drop_never_runs_when_its_client_leaves_with_a_full_backlog(
    make_gateway: MakeGateway,
    upstream: Upstream,
    victims: str,
    io_path: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compiled = native.load()
    if io_path == "compiled" and compiled is None:
        pytest.skip("the compiled I/O loop is not built")
    full = threading.Event()  # the backlog overflowed: the client paused (before) or ended
    client_data = Relay.client_data

    def watched(self: Relay, data: bytes) -> Step:
        step = client_data(self, data)
        if step.pause or step.end:
            full.set()
        return step

    monkeypatch.setattr(Relay, "client_data", watched)
    approve, release, asked = _held_until_released()
    gw = make_gateway(
        rules=[{"id": "drops", "sql": {"kinds": ["drop"]}, "action": "require_approval"}],
        approve=approve,
    )
    shared: Any = gw.handle.gateway._shared  # type: ignore[attr-defined]
    shared.io = compiled.Loop() if io_path == "compiled" and compiled is not None else False
    sock = _logged_in(gw)
    try:
        sock.sendall(encode_query(f"DROP TABLE {victims}"))
        _wait_for(lambda: bool(asked), "the approval request")
        filler = encode_query("SELECT '" + "x" * 65536 + "'") * (2 * MAX_BACKLOG // 65536 + 8)
        sock.setblocking(False)
        sent = 0
        while not full.is_set() and sent < len(filler):
            try:
                sent += sock.send(filler[sent : sent + 65536])
            except BlockingIOError:
                full.wait(0.05)
            except OSError:  # the gateway ended the connection
                break
        _wait_for(full.is_set, "the backlog to overflow")
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()  # the client is gone; its hold must end with it
        _wait_for(lambda: bool(_never_sent(gw)), "the held statement's end", timeout=15)
    finally:
        sock.close()
        release.set()
    assert _alive_after(gw)
    assert _exists(upstream, victims)


@pytest.mark.parametrize("io_path", ["compiled", "python"])
def test_an_approved_statement_is_not_sent_for_a_client_that_left_while_unread(
    make_gateway: MakeGateway,
    upstream: Upstream,
    victims: str,
    io_path: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The client is not read while its statement is held (as when the upstream is slow to take
    what came before it: flow control pauses the client), so its leaving is not reported: the
    approval that comes after must not send the statement for nobody."""
    compiled = native.load()
    if io_path == "compiled" and compiled is None:
        pytest.skip("the compiled I/O loop is not built")
    client_data = Relay.client_data

    def paused_at_hold(self: Relay, data: bytes) -> Step:
        step = client_data(self, data)
        return step._replace(pause=True) if step.hold is not None else step

    monkeypatch.setattr(Relay, "client_data", paused_at_hold)
    approve, release, asked = _held_until_released()
    gw = make_gateway(
        rules=[{"id": "drops", "sql": {"kinds": ["drop"]}, "action": "require_approval"}],
        approve=approve,
    )
    shared: Any = gw.handle.gateway._shared  # type: ignore[attr-defined]
    shared.io = compiled.Loop() if io_path == "compiled" and compiled is not None else False
    sock = _logged_in(gw)
    try:
        sock.sendall(encode_query(f"DROP TABLE {victims}"))
        _wait_for(lambda: bool(asked), "the approval request")
    finally:
        sock.close()  # the client is gone, unread
        release.set()  # and then the approver says yes
    _wait_for(
        lambda: bool(_never_sent(gw)) or not _exists(upstream, victims), "the held statement's end"
    )
    assert _exists(upstream, victims)
    assert _alive_after(gw)
