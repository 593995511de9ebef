"""Broker exchanges per second and latency (static provider, RS256 verification), SQLite and
PostgreSQL stores, against a bare endpoint (`GET /healthz`) of the same server, same client,
same run.

    .venv/bin/python bench/broker_exchange.py [--quick] [--duration S] [--connections N]

The broker runs as `airlock broker serve`. The load generator is `wrk` (C, keep-alive; Debian's
`apt-get install wrk`), so the client is not the bottleneck: a Lua script feeds each request a
fresh pre-minted token (every jti is single-use), and reports latency percentiles. Tokens are
minted up front for more requests than the run can make; a run that runs out of tokens says so
(replayed tokens are refused and counted as errors).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.broker.conftest import AUDIENCE, broker_yaml
from tests.support.oidc_issuer import OIDCIssuer
from tests.support.postgres import PostgresCluster

from _util import tool

WRK_THREADS = 2

# One Lua state per wrk thread: each takes every n-th line of the token file, so no two
# connections ever send the same token. done() runs in the main state and prints one JSON line.
_LUA_COMMON = r"""
local threads = {}
local counter = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end
function done(summary, latency, requests)
  local wrapped = 0
  for _, t in ipairs(threads) do wrapped = wrapped + (t:get("wrapped") or 0) end
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"status_errors":%d,"socket_errors":%d,' ..
    '"p50_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%f,"wrapped":%d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max, latency.mean, wrapped))
end
"""

_LUA_EXCHANGE = (
    _LUA_COMMON
    + r"""
local bodies = {}
local nxt = 0
wrapped = 0
function init(args)
  local nthreads = tonumber(args[2])
  local i = 0
  for line in io.lines(args[1]) do
    if i % nthreads == tid then table.insert(bodies, line) end
    i = i + 1
  end
end
function request()
  nxt = nxt + 1
  if nxt > #bodies then nxt = 1; wrapped = wrapped + 1 end
  return wrk.format("POST", "/v1/exchange", {["Content-Type"] = "application/json"}, bodies[nxt])
end
"""
)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(config: Path, tmp: str, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    port = _port()
    env = {**os.environ, "XDG_CONFIG_HOME": tmp}
    command = [tool("airlock"), "broker", "serve", "--config", str(config), "--port", str(port)]
    if workers > 1:
        command += ["--workers", str(workers)]
    proc = subprocess.Popen(
        command,
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


def _wrk(url: str, script: Path, args: list[str], duration: float, connections: int) -> dict:
    out = subprocess.run(
        [
            "wrk",
            f"-t{WRK_THREADS}",
            f"-c{connections}",
            f"-d{round(duration)}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
            "--",
            *args,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")][-1]
    result: dict = json.loads(line)
    return result


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children (the server's workers)."""
    total = 0.0
    for p in [pid, *_children(pid)]:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _children(pid: int) -> list[int]:
    try:
        found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [int(c) for c in found]


def _measure(pid: int, *wrk_args: Any) -> dict:
    before = _cpu_seconds(pid)
    result = _wrk(*wrk_args)
    result["server_cpu_s"] = _cpu_seconds(pid) - before
    return result


def _report(name: str, r: dict, base_rps: float | None) -> float:
    rps = r["requests"] / (r["duration_us"] / 1e6)
    cpu = f"  server CPU {1e6 * r['server_cpu_s'] / max(r['requests'], 1):5.0f} µs/req"
    errors = r["status_errors"] + r["socket_errors"]
    ratio = f"  {rps / base_rps:5.2f}x of bare" if base_rps else ""
    note = "  (ran out of tokens: some were replayed)" if r.get("wrapped") else ""
    print(
        f"{name:<34} {rps:8.0f} req/s  p50 {r['p50_us'] / 1000:6.1f} ms  p99 {r['p99_us'] / 1000:6.1f} ms"
        f"  errors {errors}{cpu}{ratio}{note}",
        flush=True,
    )
    return rps


_ISSUER: OIDCIssuer | None = None


def _mint_chunk(args: tuple[int, str, str]) -> list[str]:
    count, key_pem, meta = args
    import jwt
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from tests.support.oidc_issuer import github_claims

    url, kid = json.loads(meta)
    key = load_pem_private_key(key_pem.encode(), None)
    out = []
    for _ in range(count):
        claims = json.dumps(github_claims(url, AUDIENCE)).encode()
        token = jwt.PyJWS().encode(claims, key, algorithm="RS256", headers={"kid": kid})
        out.append(json.dumps({"token": token, "grants": ["deploy"]}))
    return out


def _mint(issuer: OIDCIssuer, count: int, path: Path) -> None:
    """``count`` request bodies, each with a fresh RS256 token, one per line (both cores)."""
    from cryptography.hazmat.primitives import serialization

    pem = (
        issuer.keys[issuer.current_kid]
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    meta = json.dumps([issuer.url, issuer.current_kid])
    chunks = [(count // 8 + (i < count % 8), pem, meta) for i in range(8)]
    with multiprocessing.get_context("spawn").Pool(os.cpu_count() or 2) as pool:
        bodies = [b for chunk in pool.map(_mint_chunk, chunks) for b in chunk]
    path.write_text("\n".join(bodies) + "\n")


def _bench_store(
    issuer: OIDCIssuer, state: str, store: str, args: argparse.Namespace, tmp: str
) -> None:
    for workers in args.workers:
        label = f"{store}, {workers} worker{'s' if workers > 1 else ''}"
        _bench_server(issuer, state, label, workers, args, tmp)


def _bench_server(
    issuer: OIDCIssuer, state: str, label: str, workers: int, args: argparse.Namespace, tmp: str
) -> None:
    config = Path(tmp, "broker.yaml")
    config.write_text(broker_yaml(issuer.url, state, rate=1_000_000_000))
    bare_lua = Path(tmp, "bare.lua")
    bare_lua.write_text(_LUA_COMMON)
    exchange_lua = Path(tmp, "exchange.lua")
    exchange_lua.write_text(_LUA_EXCHANGE)
    tokens = Path(tmp, "tokens.txt")
    t0 = time.perf_counter()
    _mint(issuer, args.tokens, tokens)
    print(f"  ({args.tokens} tokens minted in {time.perf_counter() - t0:.1f} s)", flush=True)
    proc, url = _serve(config, tmp, workers)
    try:
        # Warm up: JWKS fetch, connection pool, SQL statement caches.
        with httpx.Client() as client:
            for body in json.loads("[" + ",".join(_head(tokens, 20)) + "]"):
                client.post(url + "/v1/exchange", json=body).raise_for_status()
        rest = Path(tmp, "tokens-rest.txt")
        with tokens.open() as src, rest.open("w") as dst:
            for i, line in enumerate(src):
                if i >= 20:
                    dst.write(line)
        wrk_args = (args.duration, args.connections)
        base = _report(
            f"bare GET /healthz ({label})",
            _measure(proc.pid, url + "/healthz", bare_lua, [], *wrk_args),
            None,
        )
        profile = os.environ.get("BENCH_PROFILE")  # py-spy's collapsed stacks of the server
        spy = None
        if profile and workers == 1:
            spy = subprocess.Popen(
                [
                    *(
                        tool("py-spy"),
                        "record",
                        "--gil",
                        "-f",
                        "raw",
                        "-o",
                        f"{profile}-{state[:5]}.txt",
                    ),
                    *("--pid", str(proc.pid), "--duration", str(args.duration)),
                ],
                stdout=subprocess.DEVNULL,
            )
        _report(
            f"POST /v1/exchange ({label})",
            _measure(proc.pid, url, exchange_lua, [str(rest), str(WRK_THREADS)], *wrk_args),
            base,
        )
        if spy is not None:
            spy.wait()
    finally:
        proc.terminate()
        proc.wait()


def _head(path: Path, n: int) -> list[str]:
    with path.open() as f:
        return [next(f).strip() for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="5 s per measurement, not 15 s")
    parser.add_argument("--duration", type=int, help="seconds per measurement")
    parser.add_argument("--connections", type=int, default=8, help="keep-alive connections")
    parser.add_argument("--tokens", type=int, help="tokens to mint per store")
    parser.add_argument("--only", choices=["sqlite", "postgresql"], help="one store only")
    parser.add_argument(
        "--workers", default="1,2", help="broker worker processes to measure, comma-separated"
    )
    args = parser.parse_args()
    args.workers = [int(n) for n in args.workers.split(",")]
    if shutil.which("wrk") is None:
        raise SystemExit("bench: wrk is not installed (apt-get install wrk)")
    args.duration = args.duration or (5 if args.quick else 15)
    args.tokens = args.tokens or int(args.duration * 3000)
    print(
        f"broker exchange: wrk, {WRK_THREADS} threads, {args.connections} keep-alive connections, "
        f"{args.duration:g} s per measurement; load average {_loadavg()}\n",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp, OIDCIssuer() as issuer:
        if args.only in (None, "sqlite"):
            _bench_store(issuer, f"sqlite:///{tmp}/state.db", "sqlite", args, tmp)
        if args.only in (None, "postgresql"):
            with PostgresCluster.start() as pg:
                # The test cluster logs every statement (for debugging tests); a server would not.
                with psycopg.connect(pg.dsn(), autocommit=True) as conn:
                    conn.execute("ALTER SYSTEM SET log_statement = 'none'")
                    conn.execute("SELECT pg_reload_conf()")
                _bench_store(
                    issuer,
                    f"postgresql://{pg.superuser}:{pg.password}@{pg.host}:{pg.port}/postgres",
                    "postgresql",
                    args,
                    tmp,
                )
    print(f"\nload average after: {_loadavg()}")


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


if __name__ == "__main__":
    main()
