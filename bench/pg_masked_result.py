"""A 1M-row result with one masked column: psql directly vs through the Airlock gateway.

    .venv/bin/python bench/pg_masked_result.py [--rows N] [--rounds N]

A throwaway PostgreSQL cluster with a table of N rows (default 1,000,000: an int and an
``email`` text column); ``psql -At -c 'SELECT n, email FROM big' > /dev/null`` against the
server directly (the baseline, same run) and through the gateway with ``mask_columns:
[*.email]``, ``mask_values: true`` and every statement recorded to a session log, once with
the compiled row path (``rowpath``, when built) and once with the pure-Python one, in turns.
Prints the median wall time of each over the rounds (the machine may be shared), the ratios,
and the CPU time of the gateway's thread per run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.postgres import PostgresCluster  # noqa: E402

from airlock.audit import SessionWriter  # noqa: E402
from airlock.gateway.postgres import framing, results, rowpath  # noqa: E402
from airlock.gateway.postgres.server import UpstreamLogin, start_in_thread  # noqa: E402
from airlock.gateway.tickets import Ticket  # noqa: E402
from airlock.mask import Masker, MaskSettings  # noqa: E402
from _util import pg_gateway_config  # noqa: E402

QUERY = "SELECT n, email FROM big"


def psql_seconds(port: int, password: str) -> float:
    env = {**os.environ, "PGPASSWORD": password, "PGSSLMODE": "disable"}
    started = time.perf_counter()
    subprocess.run(
        ["psql", "-X", "-At", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d",
         "postgres", "-c", QUERY],
        env=env, stdout=subprocess.DEVNULL, check=True,
    )  # fmt: skip
    return time.perf_counter() - started


def thread_cpu(name: str) -> float:
    thread = next(t for t in threading.enumerate() if t.name == name)
    assert thread.ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def use_row_path(compiled: bool) -> None:
    """Switch the gateway's row loops (between runs: the bench is the only user)."""
    if compiled:
        framing.split_frames = rowpath.split
        results.join_values, results.mask_one_column = rowpath.join_values, rowpath.mask_one_column
    else:
        framing.split_frames = rowpath.py_split
        results.join_values = rowpath.py_join_values
        results.mask_one_column = rowpath.py_mask_one_column


def timed(run: Callable[[], float]) -> tuple[float, float]:
    before = thread_cpu("airlock-pg-bench")
    wall = run()
    return wall, thread_cpu("airlock-pg-bench") - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with PostgresCluster.start() as pg:
        env = {**os.environ, "PGPASSWORD": pg.password}
        subprocess.run(
            ["psql", "-X", "-q", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", "-c",
             f"CREATE TABLE big AS SELECT i AS n, 'u' || i || '@example.com' AS email "
             f"FROM generate_series(1, {args.rows}) i"],
            env=env, check=True,
        )  # fmt: skip
        sessions = Path(tempfile.mkdtemp(prefix="airlock-bench-"))
        writer = SessionWriter.create(sessions)
        config = pg_gateway_config(pg.port, ["*.email"])
        ticket = Ticket.issue(writer.session_id, "bench")
        gateway = start_in_thread(
            config, masker=Masker(MaskSettings()), record=writer.append,
            approve=lambda _: False, ticket=ticket,
            login=UpstreamLogin("postgres", pg.password),
        )  # fmt: skip
        paths = ["compiled", "python"] if rowpath.ROW_PATH == "compiled" else ["python"]
        direct: list[float] = []
        wall: dict[str, list[float]] = {p: [] for p in paths}
        cpu: dict[str, list[float]] = {p: [] for p in paths}
        port = gateway.address[1]
        try:
            for _ in range(args.rounds):
                direct.append(psql_seconds(pg.port, pg.password))
                for path in paths:
                    use_row_path(path == "compiled")
                    seconds, used = timed(lambda: psql_seconds(port, ticket.value))
                    wall[path].append(seconds)
                    cpu[path].append(used)
        finally:
            use_row_path(rowpath.ROW_PATH == "compiled")
            gateway.close()
            writer.close()
            shutil.rmtree(sessions, ignore_errors=True)
    base = statistics.median(direct)
    print(f"{args.rows:,} rows, one masked column, median of {args.rounds} rounds in turns:")
    print(f"  direct (baseline)     {base:6.2f} s   rounds: {' '.join(f'{t:.2f}' for t in direct)}")
    for path in paths:
        median = statistics.median(wall[path])
        print(
            f"  gateway, {path:<8} row path {median:6.2f} s = {median / base:.2f}x direct "
            f"(target <= 2x); gateway thread CPU {statistics.median(cpu[path]):.2f} s "
            f"({statistics.median(cpu[path]) / args.rows * 1e6:.2f} us/row); rounds: "
            f"{' '.join(f'{t:.2f}' for t in wall[path])}"
        )
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
