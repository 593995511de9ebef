"""CPU per statement of the PostgreSQL gateway's sans-I/O relay, recording included, without
sockets: the load-independent half of bench/pgbench_gateway.py.

    .venv/bin/python bench/pg_relay_cpu.py [--statements 3000] [--rounds 7] [--compare CORE]

The bytes of `pgbench -S` (simple: a Query per statement; prepared: Parse once, then
Bind/Describe/Execute/Sync) and the server's answers (RowDescription, DataRow, CommandComplete,
ReadyForQuery) go through one connection's Relay and Results as they would live, with the same
policy as pgbench_gateway.py (a guardrail, `mask_columns: [*.password]`, value masking) and
every event recorded by a real SessionWriter (to a temporary session). Each round runs in a
fresh process. ``--compare CORE`` runs another source tree's ``core`` (say, an older commit's,
from `git archive`) in turn with this one each round. Printed: median and minimum CPU
microseconds per statement, and Python function calls per statement (a count, so the same on a
loaded machine).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORE = HERE.parent / "core"
SQL = "SELECT abalance FROM pgbench_accounts WHERE aid = "


def _row_description() -> bytes:
    from airlock.gateway.postgres.encode import encode_message

    field = b"abalance\0" + struct.pack("!ihihih", 16390, 3, 23, 4, -1, 0)
    return encode_message(b"T", struct.pack("!h", 1) + field)


def traffic(mode: str, count: int, seed: int = 7) -> list[tuple[str, bytes]]:
    """(side, bytes) chunks as one pgbench -S connection and its server exchange them."""
    from airlock.gateway.postgres.encode import (
        encode_data_row,
        encode_message,
        encode_parse,
        encode_query,
        encode_ready,
    )

    rng = random.Random(seed)
    answer = _row_description() + encode_data_row([b"0"])
    answer += encode_message(b"C", b"SELECT 1\0") + encode_ready("I")
    chunks: list[tuple[str, bytes]] = []
    if mode == "prepared":
        sync = encode_message(b"S")
        chunks.append(("c", encode_parse("P0_1", SQL + "$1;") + encode_message(b"D", b"SP0_1\0")))
        chunks.append(("c", sync))
        params = encode_message(b"t", struct.pack("!hi", 1, 23))
        chunks.append(("u", encode_message(b"1") + params + _row_description() + encode_ready("I")))
    for _ in range(count):
        aid = str(rng.randint(1, 100_000)).encode()
        if mode == "simple":
            chunks.append(("c", encode_query(SQL + aid.decode() + ";")))
            chunks.append(("u", answer))
            continue
        bind = b"\0P0_1\0" + struct.pack("!hhi", 0, 1, len(aid)) + aid + struct.pack("!h", 0)
        chunks.append(
            (
                "c",
                encode_message(b"B", bind)
                + encode_message(b"D", b"P\0")
                + encode_message(b"E", b"\0" + struct.pack("!i", 0))
                + encode_message(b"S"),
            )
        )
        chunks.append(("u", encode_message(b"2") + answer))
    return chunks


def worker(mode: str, count: int, calls: bool) -> dict[str, float]:
    """One measurement in this process (the tree on PYTHONPATH is the one measured)."""
    sys.path.insert(0, str(HERE))
    from _util import pg_gateway_config

    from airlock.audit import SessionWriter
    from airlock.gateway.postgres._shared import Shared, UpstreamLogin
    from airlock.gateway.postgres.guard import SqlGuard
    from airlock.gateway.postgres.masking import ColumnMasker
    from airlock.gateway.postgres.relay import Relay
    from airlock.gateway.tickets import Ticket
    from airlock.mask import Masker, MaskSettings
    from airlock.policy.guardrails import GuardrailDefaults, GuardrailRule

    config = pg_gateway_config(5432, ["*.password"]).model_copy(update={"name": "bench"})
    rules = [GuardrailRule.model_validate(
        {"id": "no-drop", "sql": {"kinds": ["drop", "truncate"]}, "action": "deny"})]  # fmt: skip
    warm, chunks = traffic(mode, count, seed=1), traffic(mode, count)
    with tempfile.TemporaryDirectory() as tmp, SessionWriter.create(Path(tmp)) as writer:
        shared = Shared(
            config=config, login=UpstreamLogin("postgres", "x"), masker=Masker(MaskSettings()),
            record=writer.append, approve=lambda op: False,
            ticket=Ticket.issue(writer.session_id, config.name),
            guard=SqlGuard(rules, GuardrailDefaults(), config.name),
            columns=ColumnMasker(config.mask_columns), startup_timeout=10.0,
        )  # fmt: skip

        def run(chunks: list[tuple[str, bytes]] = chunks) -> None:
            relay = Relay(shared, "bench0001")
            for name, value in (("standard_conforming_strings", "on"), ("client_encoding", "UTF8")):
                relay.state.update(name, value)
            for side, data in chunks:
                if side == "c":
                    relay.client_data(data)
                else:
                    relay.results.feed(data)

        run(warm)  # verdict and plan caches warm (other literals), as live after the first second
        if calls:
            import cProfile
            import pstats

            profile = cProfile.Profile()
            profile.runcall(run)
            total = pstats.Stats(profile).total_calls  # type: ignore[attr-defined]
            return {"calls": total / count}
        started = time.process_time()
        run()
        spent = time.process_time() - started
        events = writer.seq
    return {"us": spent / count * 1e6, "events": events / count / 2}


def measure(core: Path, mode: str, count: int, calls: bool = False) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(core)}
    args = [sys.executable, __file__, "--worker", "--mode", mode, "--statements", str(count)]
    out = subprocess.run(
        [*args, *(["--calls"] if calls else [])], env=env, capture_output=True, text=True,
        check=True,
    ).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--statements", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--mode", choices=["simple", "prepared", "both"], default="both")
    parser.add_argument("--compare", type=Path, help="another tree's core/ to run in turn")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--calls", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.mode, args.statements, args.calls)))
        return
    trees = {"this tree": CORE, **({"compared": args.compare} if args.compare else {})}
    modes = ["simple", "prepared"] if args.mode == "both" else [args.mode]
    load = os.getloadavg()
    for mode in modes:
        cpu: dict[str, list[float]] = {name: [] for name in trees}
        for _ in range(args.rounds):
            for name, core in trees.items():
                cpu[name].append(measure(core, mode, args.statements)["us"])
        for name, core in trees.items():
            calls = measure(core, mode, args.statements, calls=True)["calls"]
            print(f"{mode:<8} {name:<10} CPU per statement median {statistics.median(cpu[name]):6.1f}"
                  f" us, min {min(cpu[name]):6.1f} us; Python calls per statement {calls:.0f}")  # fmt: skip
    print(f"{args.rounds} rounds of {args.statements} statements; load average before "
          f"{' '.join(f'{x:.2f}' for x in load)}, after "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")  # fmt: skip


if __name__ == "__main__":
    main()
