"""Requests per second and latency through the HTTP gateway vs direct to the same upstream.

Same run, same machine: a small JSON upstream under uvicorn (its own process), the Airlock HTTP
gateway in front of it (its own process: ticket check, held bearer credential, recording every
request and response to a real session log with masking and a 64 KiB body cap), and a Python
load client (httpx.AsyncClient, bounded concurrency) in this process. Each target is measured in
turns (direct, gateway, direct, gateway, ...) and the best round counts. Prints req/s, p50 and
p99 for both and the ratio gateway/direct (the baseline).

    .venv/bin/python bench/http_gateway.py [--quick] [--concurrency 16] [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _util import free_port, serve_until_killed, wait_port

_TICKET = "bench-ticket-" + "t" * 32
_TOKEN = "bench-upstream-token-" + "u" * 24
_BODY = json.dumps(
    {"items": [{"id": i, "name": f"item-{i}", "ok": True} for i in range(20)]}
).encode()


# ----------------------------------------------------------------------------- roles


async def _upstream_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(_BODY)).encode()),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": _BODY})


def _run_upstream(port: int) -> None:
    import uvicorn

    uvicorn.run(
        _upstream_app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )


def _run_gateway(port: int, upstream: str, sessions: str) -> None:
    from airlock.audit import SessionWriter
    from airlock.gateway.http import serve_http
    from airlock.gateway.tickets import Ticket
    from airlock.mask import Masker, MaskSettings
    from airlock.policy.gateways import HttpGatewayConfig

    config = HttpGatewayConfig.model_validate(
        {
            "name": "bench",
            "kind": "http",
            "listen": f"127.0.0.1:{port}",
            "upstream": upstream,
            "credential": {"env": {"bearer": "BENCH_TOKEN"}},
            "record_bodies": 65536,
            "mask_json_fields": ["password"],
        }
    )
    writer = SessionWriter.create(Path(sessions))
    ticket = Ticket("bench-session", "bench", _TICKET)

    serve_until_killed(
        lambda: serve_http(
            config,
            masker=Masker(MaskSettings()),
            record=writer.append,
            approve=None,
            ticket=ticket,
            environ={"BENCH_TOKEN": _TOKEN},
        )
    )


def _run_bare(port: int, upstream: str) -> None:
    """The floor: the same server and client stack (uvicorn h11, httpx) forwarding with no
    ticket, rules, recording or masking. Not Airlock: what any Python proxy of this shape costs."""
    import httpx
    import uvicorn

    client = httpx.AsyncClient(base_url=upstream, trust_env=False)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        response = await client.request(scope["method"], scope["path"])
        headers = [(k, v) for k, v in response.headers.raw if k.lower() != b"transfer-encoding"]
        await send(
            {"type": "http.response.start", "status": response.status_code, "headers": headers}
        )
        await send({"type": "http.response.body", "body": response.content})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                lifespan="off", http="h11")  # fmt: skip


# ----------------------------------------------------------------------------- load


async def _load(
    url: str, seconds: float, concurrency: int, headers: dict[str, str]
) -> tuple[float, list[float], int]:
    import httpx

    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, headers=headers, timeout=30) as client:

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                response = await client.get(url)
                if response.status_code != 200:
                    errors += 1
                latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return len(latencies) / elapsed, latencies, errors


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="2 rounds of 3 s")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--role", choices=["upstream", "gateway", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    parser.add_argument("--sessions", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "upstream":
        _run_upstream(args.port)
        return
    if args.role == "gateway":
        _run_gateway(args.port, args.upstream, args.sessions)
        return
    if args.role == "bare":
        _run_bare(args.port, args.upstream)
        return
    seconds, rounds = (3.0, 2) if args.quick else (args.seconds, args.rounds)
    _bench(seconds, rounds, args.concurrency)


def _bench(seconds: float, rounds: int, concurrency: int) -> None:
    up_port, gw_port, bare_port = free_port(), free_port(), free_port()
    me = [sys.executable, __file__]
    with tempfile.TemporaryDirectory() as sessions:
        upstream = subprocess.Popen([*me, "--role", "upstream", "--port", str(up_port)])
        bare = subprocess.Popen(
            [*me, "--role", "bare", "--port", str(bare_port), "--upstream",
             f"http://127.0.0.1:{up_port}"]
        )  # fmt: skip
        gateway = subprocess.Popen(
            [
                *me,
                "--role",
                "gateway",
                "--port",
                str(gw_port),
                "--upstream",
                f"http://127.0.0.1:{up_port}",
                "--sessions",
                sessions,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            wait_port(up_port)
            wait_port(bare_port)
            assert gateway.stdout is not None
            if gateway.stdout.readline().strip() != "ready":
                raise SystemExit("bench: the gateway did not start")
            cpu_before = _cpu_seconds(gateway.pid)
            results = _measure(up_port, gw_port, bare_port, seconds, rounds, concurrency)
            cpu = _cpu_seconds(gateway.pid) - cpu_before
            log = next(Path(sessions).rglob("events.jsonl"))
            events = sum(1 for _ in log.open("rb"))
        finally:
            for proc in (gateway, bare, upstream):
                proc.terminate()
                proc.wait(10)
    _report(results, seconds, rounds, concurrency, events)
    # each request through the gateway writes http.request and http.response
    print(f"gateway CPU per request: {cpu / max(1, events // 2) * 1000:.3f} ms (user+system)")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc): less sensitive to a busy machine
    than wall time."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure(
    up_port: int, gw_port: int, bare_port: int, seconds: float, rounds: int, concurrency: int
) -> dict[str, tuple[float, list[float], int]]:
    targets = {
        "direct": (f"http://127.0.0.1:{up_port}/items", {}),
        "bare": (f"http://127.0.0.1:{bare_port}/items", {}),
        "gateway": (f"http://127.0.0.1:{gw_port}/items", {"Authorization": f"Bearer {_TICKET}"}),
    }
    best: dict[str, tuple[float, list[float], int]] = {}
    for url, headers in targets.values():  # warm-up
        asyncio.run(_load(url, 1.0, concurrency, headers))
    for _ in range(rounds):
        for name, (url, headers) in targets.items():
            result = asyncio.run(_load(url, seconds, concurrency, headers))
            if name not in best or result[0] > best[name][0]:
                best[name] = result
    return best


def _report(
    results: dict[str, tuple[float, list[float], int]],
    seconds: float,
    rounds: int,
    concurrency: int,
    events: int,
) -> None:
    print(
        f"HTTP gateway benchmark: GET of a {len(_BODY)}-byte JSON body, concurrency {concurrency}, "
        f"best of {rounds} rounds of {seconds:.0f} s, {os.cpu_count()} CPUs"
    )
    print(f"{'target':<10}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
    for name, (rps, lat, errors) in results.items():
        print(f"{name:<10}{rps:>10.0f}{_pct(lat, 0.5):>10.2f}{_pct(lat, 0.99):>10.2f}{errors:>8}")
    direct, gateway = results["direct"], results["gateway"]
    print(f"ratio gateway/direct (req/s): {gateway[0] / direct[0]:.2f}x")
    bare = results["bare"]
    print(
        f"ratio bare proxy/direct: {bare[0] / direct[0]:.2f}x; gateway/bare proxy: "
        f"{gateway[0] / bare[0]:.2f}x (the floor of a uvicorn + httpx hop, same run)"
    )
    print(
        f"added p50 latency: {_pct(gateway[1], 0.5) - _pct(direct[1], 0.5):.2f} ms "
        f"(median of all requests {statistics.median(gateway[1]) * 1000:.2f} ms)"
    )
    print(f"session log lines written by the gateway: {events}")


if __name__ == "__main__":
    main()
