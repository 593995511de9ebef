"""A 1M-row result with one masked column: psql directly vs through the Airlock gateway.

    .venv/bin/python bench/pg_masked_result.py [--rows N] [--rounds N]

A throwaway PostgreSQL cluster with a table of N rows (default 1,000,000: an int and an
``email`` text column); ``psql -At -c 'SELECT n, email FROM big' > /dev/null`` against the
server directly (the baseline, same run) and through the gateway with ``mask_columns:
[*.email]``, ``mask_values: true`` and every statement recorded to a session log. Prints the
best wall time of each over the rounds (the machine may be shared) and the ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.postgres import PostgresCluster  # noqa: E402

from airlock.audit import SessionWriter  # noqa: E402
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
        direct, through = [], []
        try:
            for _ in range(args.rounds):
                direct.append(psql_seconds(pg.port, pg.password))
                through.append(psql_seconds(gateway.address[1], ticket.value))
        finally:
            gateway.close()
            writer.close()
            shutil.rmtree(sessions, ignore_errors=True)
    best_direct, best_gateway = min(direct), min(through)
    print(f"{args.rows:,} rows, one masked column, best of {args.rounds}:")
    print(
        f"  direct (baseline) {best_direct:6.2f} s   rounds: {' '.join(f'{t:.2f}' for t in direct)}"
    )
    print(
        f"  through gateway   {best_gateway:6.2f} s   rounds: {' '.join(f'{t:.2f}' for t in through)}"
    )
    print(
        f"  gateway / direct = {best_gateway / best_direct:.2f}x (target <= 2x); load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)"
    )


if __name__ == "__main__":
    main()
