"""`airlock broker serve --workers N`: N processes on one socket, one shared state store. A
token is single-use across the workers, the lease ledger sees every exchange, and SIGTERM stops
every worker."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from tests.broker.conftest import AUDIENCE, broker_yaml
from tests.support.broker_server import start_broker_process
from tests.support.oidc_issuer import OIDCIssuer

from airlock.broker.state import StateStore

WORKERS = 2


def _children(pid: int) -> set[int]:
    return {int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


@pytest.fixture
def served(
    issuer: OIDCIssuer, tmp_path: Path
) -> Iterator[tuple[str, str, subprocess.Popen[bytes]]]:
    state = f"sqlite:///{tmp_path / 'state.db'}"
    config = tmp_path / "broker.yaml"
    config.write_text(broker_yaml(issuer.url, state))
    serve = ["broker", "serve", "--config", str(config), "--workers", str(WORKERS)]
    proc, url = start_broker_process(serve, tmp_path / "config")
    yield url, state, proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)


def _exchange(url: str, token: str) -> int:
    # A fresh connection each time, so that the kernel spreads them over the workers.
    with httpx.Client(timeout=30) as client:
        response = client.post(f"{url}/v1/exchange", json={"token": token, "grants": ["deploy"]})
    return response.status_code


Served = tuple[str, str, subprocess.Popen[bytes]]


def test_workers_share_single_use_and_the_ledger(issuer: OIDCIssuer, served: Served) -> None:
    url, state, proc = served
    assert len(_children(proc.pid)) >= WORKERS
    tokens = [issuer.mint(issuer.github_claims(AUDIENCE)) for _ in range(24)]
    replayed = tokens[0]
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda t: _exchange(url, t), [*tokens, *[replayed] * 8]))
    assert codes[:24] == [200] * 24
    assert codes[24:] == [401] * 8
    store = StateStore(state)
    try:
        assert len(store.leases()) == 24
    finally:
        store.close()


def test_sigterm_stops_every_worker(served: Served) -> None:
    _, _, proc = served
    workers = _children(proc.pid)
    assert len(workers) >= WORKERS
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{w}").exists() for w in workers):
        assert time.monotonic() < deadline, "a worker outlived SIGTERM"
        time.sleep(0.1)
