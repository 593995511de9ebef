"""Broker exchanges per second and latency (static provider, RS256 verification), SQLite and
PostgreSQL stores, against a bare endpoint (`/healthz`) of the same server stack, same run.

    .venv/bin/python bench/broker_exchange.py [--quick]

The broker runs as `airlock broker serve` (one uvicorn process); the load is 8 client threads
over keep-alive connections; every token is fresh (single-use jti).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.broker.conftest import AUDIENCE, broker_yaml
from tests.support.oidc_issuer import OIDCIssuer
from tests.support.postgres import PostgresCluster

from _util import tool

THREADS = 8


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(config: Path, tmp: str) -> tuple[subprocess.Popen[bytes], str]:
    port = _port()
    env = {**os.environ, "XDG_CONFIG_HOME": tmp}
    proc = subprocess.Popen(
        [tool("airlock"), "broker", "serve", "--config", str(config), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(url + "/healthz").status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit("broker did not start")


def _load(requests: list[Callable[[httpx.Client], int]]) -> tuple[float, list[float], int]:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    queue = list(requests)

    def worker() -> None:
        nonlocal errors
        with httpx.Client(timeout=30) as client:
            while True:
                with lock:
                    if not queue:
                        return
                    call = queue.pop()
                start = time.perf_counter()
                status = call(client)
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    errors += status != 200

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, latencies, errors


def _report(name: str, wall: float, lat: list[float], errors: int, base_rps: float | None) -> float:
    lat.sort()
    rps = len(lat) / wall
    p99 = lat[int(len(lat) * 0.99) - 1]
    ratio = f"  {rps / base_rps:5.2f}x of bare" if base_rps else ""
    print(
        f"{name:<34} {rps:8.0f} req/s  p50 {statistics.median(lat) * 1000:6.1f} ms  p99 {p99 * 1000:6.1f} ms  errors {errors}{ratio}"
    )
    return rps


def _exchange_call(url: str, token: str) -> Callable[[httpx.Client], int]:
    def call(client: httpx.Client) -> int:
        return client.post(
            url + "/v1/exchange", json={"token": token, "grants": ["deploy"]}
        ).status_code

    return call


def _bench_store(issuer: OIDCIssuer, state: str, label: str, count: int, tmp: str) -> None:
    config = Path(tmp, f"broker-{label}.yaml")
    config.write_text(broker_yaml(issuer.url, state, rate=1_000_000))
    proc, url = _serve(config, tmp)
    try:
        bare = [lambda c: c.get(url + "/healthz").status_code for _ in range(count)]
        base = _report(f"bare GET /healthz ({label})", *_load(bare), None)
        tokens = [issuer.mint(issuer.github_claims(AUDIENCE)) for _ in range(count)]
        calls = [_exchange_call(url, t) for t in tokens]
        _report(f"POST /v1/exchange ({label})", *_load(calls), base)
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    count = 300 if args.quick else 2000
    with tempfile.TemporaryDirectory() as tmp, OIDCIssuer() as issuer:
        print(f"broker exchange, {count} requests, {THREADS} client threads\n")
        _bench_store(issuer, f"sqlite:///{tmp}/state.db", "sqlite", count, tmp)
        with PostgresCluster.start() as pg:
            _bench_store(
                issuer,
                f"postgresql://{pg.superuser}:{pg.password}@{pg.host}:{pg.port}/postgres",
                "postgresql",
                count,
                tmp,
            )


if __name__ == "__main__":
    main()
