"""Requests per second and latency through the HTTP gateway vs direct to the same upstream.

Same run, same machine: a small JSON upstream under uvicorn (its own process), the Airlock HTTP
gateway in front of it (its own process: ticket check, held bearer credential, recording every
request and response to a real session log with masking and a 64 KiB body cap), and a Python
load client (httpx.AsyncClient, bounded concurrency) in this process. Each target is measured in
turns (direct, bare, gateway, direct, ...) and the median round counts. Prints req/s, p50, p99
and the CPU per request of each server process (from /proc schedstat, far less sensitive to a
busy machine than wall time) for every target, and the ratio gateway/direct (the baseline).

``--before REV|DIR`` adds the gateway of older code (a git revision, or a directory holding its
``airlock`` package) as one more target of the same turns; ``--calls N`` then counts the Python
function calls per request of each gateway (cProfile over N raw keep-alive requests: a figure
the machine's load does not move).

    .venv/bin/python bench/http_gateway.py [--quick] [--concurrency 16] [--seconds 8] [--raw-client]
        [--before main] [--calls 2000]
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
from collections.abc import Callable, Coroutine
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
    from airlock.gateway.serving import new_event_loop
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

    async def start() -> Any:
        gateway = await serve_http(
            config,
            masker=Masker(MaskSettings()),
            record=writer.append,
            approve=None,
            ticket=ticket,
            environ={"BENCH_TOKEN": _TOKEN},
        )
        _count_calls_on_signal()
        return gateway

    serve_until_killed(start, new_loop=new_event_loop)  # the loop `airlock run` gives it


def _count_calls_on_signal() -> None:
    """SIGUSR1 starts a cProfile of this process; SIGUSR2 stops it and prints the calls seen
    (all, and those of Python functions) on stdout."""
    import cProfile
    import pstats
    import signal

    profiler = cProfile.Profile()

    def report() -> None:
        profiler.disable()
        stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
        total = sum(row[1] for row in stats.values())
        python = sum(row[1] for key, row in stats.items() if key[0] != "~")
        print(f"calls {total} {python}", flush=True)

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, profiler.enable)
    loop.add_signal_handler(signal.SIGUSR2, report)


def _run_bare(port: int, upstream: str) -> None:
    """A reference: uvicorn h11 + httpx (the gateway's stack before issue 12) forwarding with no
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


async def _load_raw(
    url: str,
    seconds: float,
    concurrency: int,
    headers: dict[str, str],
    requests: int | None = None,
) -> tuple[float, list[float], int]:
    """The same load from a minimal keep-alive client (asyncio streams, one request line and a
    Content-Length read): the client's own cost barely counts, so the ratio is the servers'."""
    _, _, rest = url.partition("://")
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.partition(":")
    lines = [f"GET /{path} HTTP/1.1", f"Host: {hostport}"] + [
        f"{k}: {v}" for k, v in headers.items()
    ]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, int(port))
        while time.perf_counter() < stop_at and (requests is None or len(latencies) < requests):
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 200"):
                errors += 1
            latencies.append(time.perf_counter() - started)
        writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies) / (time.perf_counter() - began), latencies, errors


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 rounds of 2 s")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--before",
        metavar="REV|DIR",
        help="also measure the gateway of older code: a git revision or a directory with airlock/",
    )
    parser.add_argument(
        "--calls",
        type=int,
        default=0,
        metavar="N",
        help="count Python function calls per request over N raw requests (cProfile)",
    )
    parser.add_argument(
        "--raw-client",
        action="store_true",
        help="load with a minimal keep-alive client instead of httpx (the servers' cost alone)",
    )
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
    seconds, rounds = (2.0, 3) if args.quick else (args.seconds, args.rounds)
    load = _load_raw if args.raw_client else _load
    with tempfile.TemporaryDirectory() as scratch:
        before = _before_tree(args.before, Path(scratch)) if args.before else None
        _bench(seconds, rounds, args.concurrency, load, before, args.calls)


def _before_tree(spec: str, scratch: Path) -> str:
    """The directory holding the older code's ``airlock`` package."""
    if (Path(spec) / "airlock").is_dir():
        return str(Path(spec).resolve())
    root = Path(__file__).resolve().parent.parent
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", spec, "core"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(scratch)], input=archive.stdout, check=True)
    return str(scratch / "core")


Result = tuple[float, list[float], int, dict[str, float]]  # req/s, latencies, errors, CPU ms/req


Load = Callable[
    [str, float, int, dict[str, str]], Coroutine[Any, Any, tuple[float, list[float], int]]
]


def _bench(
    seconds: float, rounds: int, concurrency: int, load: Load, before: str | None, calls: int
) -> None:
    up_port, bare_port = free_port(), free_port()
    ports = {"gateway": free_port(), "before": free_port()}
    me = [sys.executable, __file__]
    upstream_url = f"http://127.0.0.1:{up_port}"
    load_before = os.getloadavg()
    trees = {"gateway": None, "before": before} if before else {"gateway": None}
    with tempfile.TemporaryDirectory() as sessions:
        upstream = subprocess.Popen([*me, "--role", "upstream", "--port", str(up_port)])
        bare = subprocess.Popen(
            [*me, "--role", "bare", "--port", str(bare_port), "--upstream", upstream_url]
        )  # fmt: skip
        gateways = {}
        for name, tree in trees.items():
            env = dict(os.environ, PYTHONPATH=tree) if tree else None
            gateways[name] = subprocess.Popen(
                [*me, "--role", "gateway", "--port", str(ports[name]), "--upstream",
                 upstream_url, "--sessions", f"{sessions}/{name}"],
                stdout=subprocess.PIPE, text=True, env=env,
            )  # fmt: skip
        try:
            wait_port(up_port)
            wait_port(bare_port)
            for name, proc in gateways.items():
                assert proc.stdout is not None
                if proc.stdout.readline().strip() != "ready":
                    raise SystemExit(f"bench: the {name} gateway did not start")
            pids = {"upstream": upstream.pid, "bare": bare.pid}
            pids |= {name: proc.pid for name, proc in gateways.items()}
            gw_ports = {name: ports[name] for name in gateways}
            results = _measure(
                up_port, gw_ports, bare_port, seconds, rounds, concurrency, pids, load
            )
            counted = {name: _count_calls(p, ports[name], calls) for name, p in gateways.items()}
            log = next(Path(sessions, "gateway").rglob("events.jsonl"))
            events = sum(1 for _ in log.open("rb"))
        finally:
            for proc in (*gateways.values(), bare, upstream):
                proc.terminate()
                proc.wait(10)
    _report(results, seconds, rounds, concurrency, events, load_before, os.getloadavg())
    for name, (total, python) in counted.items():
        if calls:
            print(
                f"function calls per request, {name}: {total / calls:.0f} "
                f"({python / calls:.0f} of Python functions; cProfile over {calls} raw requests)"
            )


def _count_calls(proc: subprocess.Popen[str], port: int, requests: int) -> tuple[int, int]:
    """(all, Python-level) function calls the gateway made over ``requests`` raw requests."""
    if not requests:
        return 0, 0
    import signal

    headers = {"Authorization": f"Bearer {_TICKET}"}
    url = f"http://127.0.0.1:{port}/items"
    asyncio.run(_load_raw(url, 0.5, 1, headers))  # warm
    proc.send_signal(signal.SIGUSR1)
    time.sleep(0.2)
    asyncio.run(_load_raw(url, 3600, 1, headers, requests=requests))
    proc.send_signal(signal.SIGUSR2)
    assert proc.stdout is not None
    _, total, python = proc.stdout.readline().split()
    return int(total), int(python)


def _cpu_seconds(pid: int) -> float:
    """CPU time of a process, all its threads (Linux schedstat: nanoseconds actually run, far
    less sensitive to a busy machine than wall time, and exact where utime/stime are sampled
    at each clock tick)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return total / 1e9


def _measure(
    up_port: int,
    gw_ports: dict[str, int],
    bare_port: int,
    seconds: float,
    rounds: int,
    concurrency: int,
    pids: dict[str, int],
    load: Load,
) -> dict[str, list[Result]]:
    """Each target in turn (direct, bare, gateway[, before], direct, ...); per round: req/s,
    latencies, errors, and the CPU per request of every server process on the path."""
    targets: dict[str, tuple[str, dict[str, str], tuple[str, ...]]] = {
        "direct": (f"http://127.0.0.1:{up_port}/items", {}, ("upstream",)),
        "bare": (f"http://127.0.0.1:{bare_port}/items", {}, ("bare", "upstream")),
    }
    for name, port in gw_ports.items():
        targets[name] = (
            f"http://127.0.0.1:{port}/items",
            {"Authorization": f"Bearer {_TICKET}"},
            (name, "upstream"),
        )
    for url, headers, _ in targets.values():  # warm-up
        asyncio.run(load(url, 1.0, concurrency, headers))
    rows: dict[str, list[Result]] = {name: [] for name in targets}
    for _ in range(rounds):
        for name, (url, headers, path) in targets.items():
            before = {p: _cpu_seconds(pids[p]) for p in path}
            rps, latencies, errors = asyncio.run(load(url, seconds, concurrency, headers))
            count = max(1, len(latencies))
            cpu = {p: (_cpu_seconds(pids[p]) - before[p]) / count * 1000 for p in path}
            rows[name].append((rps, latencies, errors, cpu))
    return rows


def _report(
    rows: dict[str, list[Result]],
    seconds: float,
    rounds: int,
    concurrency: int,
    events: int,
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
) -> None:
    med = statistics.median
    print(
        f"HTTP gateway benchmark: GET of a {len(_BODY)}-byte JSON body, concurrency {concurrency}, "
        f"median of {rounds} interleaved rounds of {seconds:.0f} s, {os.cpu_count()} CPUs, "
        f"load avg {load_before[0]:.1f} -> {load_after[0]:.1f}"
    )
    print(f"{'target':<10}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}  CPU ms/request")
    rps = {name: med(r[0] for r in rs) for name, rs in rows.items()}
    for name, rs in rows.items():
        p50 = med(_pct(r[1], 0.5) for r in rs)
        p99 = med(_pct(r[1], 0.99) for r in rs)
        cpu = {p: med(r[3][p] for r in rs) for p in rs[0][3]}
        shown = ", ".join(f"{p} {v:.3f}" for p, v in cpu.items())
        print(
            f"{name:<10}{rps[name]:>10.0f}{p50:>10.2f}{p99:>10.2f}{sum(r[2] for r in rs):>8}  {shown}"
        )
    print(f"ratio gateway/direct (median req/s): {rps['gateway'] / rps['direct']:.2f}x")
    print(
        f"ratio bare proxy/direct: {rps['bare'] / rps['direct']:.2f}x; gateway/bare proxy: "
        f"{rps['gateway'] / rps['bare']:.2f}x (a bare uvicorn + httpx hop, same run)"
    )
    gw_cpu = med(r[3]["gateway"] for r in rows["gateway"])
    up_cpu = med(r[3]["upstream"] for r in rows["direct"])
    print(
        f"server CPU per request: direct {up_cpu:.3f} ms (upstream), through the gateway "
        f"{gw_cpu + med(r[3]['upstream'] for r in rows['gateway']):.3f} ms "
        f"(gateway {gw_cpu:.3f} ms + upstream)"
    )
    per_round = [g[0] / d[0] for g, d in zip(rows["gateway"], rows["direct"], strict=True)]
    print("gateway/direct per round: " + ", ".join(f"{r:.2f}x" for r in per_round))
    if "before" in rows:
        old_cpu = med(r[3]["before"] for r in rows["before"])
        print(
            f"older code (--before), same turns: {rps['before'] / rps['direct']:.2f}x direct, "
            f"gateway CPU {old_cpu:.3f} ms/request (now {gw_cpu:.3f} ms)"
        )
    print(f"session log lines written by the gateway: {events}")


if __name__ == "__main__":
    main()
