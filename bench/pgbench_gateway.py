"""pgbench -S through nothing vs pgbouncer vs the Airlock PostgreSQL gateway (recording + masking).

    .venv/bin/python bench/pgbench_gateway.py [--quick] [--rounds N]

A throwaway PostgreSQL cluster (tests/support/postgres.py), `pgbench -i -s 1`, then
`pgbench -S -c 8 -j 2 -T 20` (`--quick`: -T 5) against: the server directly, pgbouncer
(session pooling, from Debian) and the Airlock gateway with every statement recorded to a
session log and value masking on. Prints TPS, average latency, and ratios in the same run;
``--rounds N`` runs the three in turn N times and prints the median ratio (the machine may be
shared: one round is noisy), and the load average is printed with the figures. CPU time per
statement is printed for the gateway (its event-loop thread) and for pgbouncer (its process):
it hardly depends on the load. ``--loops uvloop,asyncio`` runs one gateway on each event loop,
in turn with the others in every round (uvloop, when installed: measured, not a win here).
``--io compiled,python`` runs one gateway per I/O path (the compiled I/O loop, ``_loop.c``, or
asyncio's transports), in turn. The gateway's CPU is the whole bench process's (every gateway
thread: the event loop's and the I/O loop's; the others idle meanwhile).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.postgres import PostgresCluster  # noqa: E402

from airlock.audit import SessionWriter  # noqa: E402
from airlock.gateway.postgres.server import (  # noqa: E402
    ThreadedGateway,
    UpstreamLogin,
    start_in_thread,
)
from airlock.gateway.tickets import Ticket  # noqa: E402
from airlock.mask import Masker, MaskSettings  # noqa: E402
from _util import pg_gateway_config  # noqa: E402
from airlock.policy.guardrails import GuardrailRule  # noqa: E402


def pgbench(port: int, password: str, seconds: int, *extra: str) -> tuple[float, float, int]:
    env = {**os.environ, "PGPASSWORD": password, "PGSSLMODE": "disable"}
    out = subprocess.run(
        ["pgbench", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-S", "-c", "8",
         "-j", "2", "-T", str(seconds), "-n", *extra, "postgres"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    tps = float(re.search(r"tps = ([\d.]+)", out).group(1))  # type: ignore[union-attr]
    latency = float(re.search(r"latency average = ([\d.]+) ms", out).group(1))  # type: ignore[union-attr]
    done = int(re.search(r"transactions actually processed: (\d+)", out).group(1))  # type: ignore[union-attr]
    return tps, latency, done


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` (pgbouncer)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    """CPU seconds (user + system) used so far by this process: the gateways' threads (the
    event loop's, the compiled I/O loop's) and an idle main thread waiting for pgbench."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def start_pgbouncer(pg: PostgresCluster) -> tuple[subprocess.Popen[bytes], int]:
    port = pg.port + 1 if pg.port < 65000 else pg.port - 1
    conf = pg.root / "pgbouncer"
    conf.mkdir(exist_ok=True)
    (conf / "userlist.txt").write_text(f'"postgres" "{pg.password}"\n')
    (conf / "pgbouncer.ini").write_text(
        f"[databases]\npostgres = host=127.0.0.1 port={pg.port} dbname=postgres\n"
        f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nauth_type = plain\n"
        f"auth_file = {conf / 'userlist.txt'}\npool_mode = session\nmax_client_conn = 100\n"
        f"default_pool_size = 20\nunix_socket_dir =\nlogfile = {conf / 'pgbouncer.log'}\n"
    )
    if pg.user:
        shutil.chown(conf, pg.user)
        for path in conf.iterdir():
            shutil.chown(path, pg.user)
    proc = subprocess.Popen(
        [shutil.which("pgbouncer") or "/usr/sbin/pgbouncer", str(conf / "pgbouncer.ini")],
        user=pg.user, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1.0)
    return proc, port


def start_gateway(
    pg: PostgresCluster, writer: SessionWriter, loop: str, io: str = "compiled"
) -> tuple[ThreadedGateway, str]:
    config = pg_gateway_config(pg.port, ["*.password"]).model_copy(
        update={"name": f"bench-{loop}-{io}"}
    )
    ticket = Ticket.issue(writer.session_id, config.name)
    rules = [GuardrailRule.model_validate(
        {"id": "no-drop", "sql": {"kinds": ["drop", "truncate"]}, "action": "deny"})]  # fmt: skip

    async def deny(op: object) -> bool:
        return False

    if loop == "uvloop":  # the gateway's thread makes its loop with asyncio.new_event_loop()
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        gateway = start_in_thread(
            config, masker=Masker(MaskSettings()), record=writer.append, approve=deny,
            ticket=ticket, guardrails=rules, login=UpstreamLogin("postgres", pg.password),
        )  # fmt: skip
    finally:
        asyncio.set_event_loop_policy(None)
    if io == "python":  # asyncio's transports move the bytes (no compiled I/O loop)
        gateway.gateway._shared.io = False
    elif gateway.gateway._shared.io_loop() is None:
        sys.exit(
            "the compiled I/O loop is not built: python -m airlock.gateway.postgres.build_rows"
        )
    return gateway, ticket.value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="5 s per target instead of 20 s")
    parser.add_argument("--seconds", type=int, help="seconds per target (overrides --quick)")
    parser.add_argument(
        "--rounds", type=int, default=1, help="run the three targets in turn N times (median)"
    )
    parser.add_argument(
        "--mode", choices=["simple", "extended", "prepared"], default="simple",
        help="pgbench -M: query protocol (prepared: Parse once, Bind/Execute each time)",
    )  # fmt: skip
    parser.add_argument(
        "--loops", default="asyncio", help="gateway event loops to run, in turn (asyncio,uvloop)"
    )
    parser.add_argument(
        "--io", default="compiled", help="gateway I/O paths to run, in turn (compiled,python)"
    )
    args = parser.parse_args()
    variants = [(loop, io) for loop in args.loops.split(",") for io in args.io.split(",")]
    loops = [f"{loop}-{io}" for loop, io in variants]
    seconds = args.seconds or (5 if args.quick else 20)
    load_before = os.getloadavg()
    rounds: list[dict[str, tuple[float, float, int]]] = []
    cpu: dict[str, list[float]] = {name: [] for name in ["pgbouncer", *loops]}
    with PostgresCluster.start() as pg:
        env = {**os.environ, "PGPASSWORD": pg.password}
        subprocess.run(
            ["pgbench", "-i", "-s", "1", "-q", "-h", "127.0.0.1", "-p", str(pg.port), "-U",
             "postgres", "postgres"], env=env, check=True, capture_output=True,
        )  # fmt: skip
        bouncer, bport = start_pgbouncer(pg)
        sessions = Path(tempfile.mkdtemp(prefix="airlock-bench-"))
        writer = SessionWriter.create(sessions)
        gateways = {f"{loop}-{io}": start_gateway(pg, writer, loop, io) for loop, io in variants}
        try:
            for _ in range(args.rounds):
                mode = ("-M", args.mode)
                results = {"direct": pgbench(pg.port, pg.password, seconds, *mode)}
                before = process_cpu(bouncer.pid)
                results["pgbouncer"] = pgbench(bport, pg.password, seconds, *mode)
                cpu["pgbouncer"].append((process_cpu(bouncer.pid) - before) / results[
                    "pgbouncer"][2])  # fmt: skip
                for loop, (gateway, ticket) in gateways.items():
                    before = own_cpu()
                    run = pgbench(gateway.address[1], ticket, seconds, *mode)
                    cpu[loop].append((own_cpu() - before) / run[2])
                    results[f"airlock-{loop}"] = run
                rounds.append(results)
        finally:
            for gateway, _ in gateways.values():
                gateway.close()
            bouncer.terminate()
            bouncer.wait(10)
            events = writer.seq
            writer.close()
            shutil.rmtree(sessions, ignore_errors=True)
    load_after = os.getloadavg()
    print(f"pgbench -S -M {args.mode} -c 8 -j 2 -T {seconds} (scale 1), "
          f"PostgreSQL {pg.bindir.parent.name}")  # fmt: skip
    for number, results in enumerate(rounds, 1):
        print(f"round {number}")
        report(results)
        print("  CPU per statement: " + ", ".join(
            f"{name} {values[number - 1] * 1e6:.0f} us" for name, values in cpu.items()))  # fmt: skip
    for loop in loops:
        ratios = sorted(r[f"airlock-{loop}"][0] / r["pgbouncer"][0] for r in rounds)
        print(f"gateway on {loop}: median airlock / pgbouncer over {len(rounds)} rounds = "
              f"{statistics.median(ratios):.2f}x (min {ratios[0]:.2f}x, max {ratios[-1]:.2f}x)")  # fmt: skip
    print("median CPU per statement: " + ", ".join(
        f"{name} {statistics.median(values) * 1e6:.1f} us" for name, values in cpu.items()))  # fmt: skip
    print(f"events recorded: {events}; load average before: "
          f"{' '.join(f'{x:.2f}' for x in load_before)}, after: "
          f"{' '.join(f'{x:.2f}' for x in load_after)} ({os.cpu_count()} CPUs)")  # fmt: skip


def report(results: dict[str, tuple[float, float, int]]) -> None:
    for name, (tps, latency, _) in results.items():
        print(f"  {name:<16} {tps:>10.0f} tps   {latency:7.3f} ms avg latency")
    bouncer_tps = results["pgbouncer"][0]
    for name, (tps, latency, _) in results.items():
        if name.startswith("airlock"):
            print(f"  {name} / pgbouncer = {tps / bouncer_tps:.2f}x (target >= 0.8x), "
                  f"/ direct = {tps / results['direct'][0]:.2f}x, added latency vs direct "
                  f"{latency - results['direct'][1]:.3f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
