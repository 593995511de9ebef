"""Added latency per MCP tool call through ``airlock mcp`` vs straight to the same stdio server.

Same run, same machine: a minimal stdio MCP server (its own process, answers each tools/call at
once), driven by a client in this process that sends one JSON-RPC ``tools/call`` line and waits
for its answer, N times in a row; once to the server directly, once through ``airlock mcp --
SERVER`` (its own process: the MCP SDK's JSON-RPC parsing, the tool rules, mcp.request and
mcp.response recorded to a real session log with masking). The difference of the mean call
times is what the gateway adds. Target (issue 15): ≤ 1 ms per call.

    .venv/bin/python bench/mcp_gateway.py [--quick] [--calls 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SERVER = r"""
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if "id" in m:
        r = {"content": [{"type": "text", "text": "ok"}], "isError": False}
        sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": m["id"], "result": r}) + "\n")
        sys.stdout.flush()
"""


def _calls(argv: list[str], n: int, env: dict[str, str]) -> float:
    """Mean seconds per call over ``n`` sequential calls (after 20 warm-up calls)."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    assert proc.stdin is not None and proc.stdout is not None
    try:

        def call(i: int) -> None:
            message = {"jsonrpc": "2.0", "id": i, "method": "tools/call",
                       "params": {"name": "add", "arguments": {"a": i, "b": 1}}}  # fmt: skip
            proc.stdin.write(json.dumps(message).encode() + b"\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
            answer = json.loads(proc.stdout.readline())  # type: ignore[union-attr]
            assert answer["id"] == i and "result" in answer, answer

        for i in range(20):
            call(i)
        started = time.perf_counter()
        for i in range(20, 20 + n):
            call(i)
        return (time.perf_counter() - started) / n
    finally:
        proc.stdin.close()
        proc.wait(30)
        proc.stdout.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 300 calls")
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    calls, rounds = (300, 1) if args.quick else (args.calls, args.rounds)
    with tempfile.TemporaryDirectory() as tmp:
        server = Path(tmp) / "server.py"
        server.write_text(SERVER)
        env = {**os.environ, "AIRLOCK_SESSIONS": str(Path(tmp) / "sessions"),
               "XDG_CONFIG_HOME": str(Path(tmp) / "config")}  # fmt: skip
        direct_argv = [sys.executable, str(server)]
        gateway_argv = [sys.executable, "-m", "airlock._cli", "mcp", "--", *direct_argv]
        direct, gateway = [], []
        for _ in range(rounds):
            direct.append(_calls(direct_argv, calls, env))
            gateway.append(_calls(gateway_argv, calls, env))
    d, g = statistics.median(direct) * 1000, statistics.median(gateway) * 1000
    print(f"{calls} sequential tools/call, median of {rounds} rounds")
    print(f"{'path':<10} {'ms/call':>9} {'calls/s':>9}")
    print(f"{'direct':<10} {d:>9.3f} {1000 / d:>9.0f}")
    print(f"{'gateway':<10} {g:>9.3f} {1000 / g:>9.0f}")
    print(f"ratio gateway/direct: {g / d:.2f}x; added per call: {g - d:.3f} ms (target <= 1 ms)")


if __name__ == "__main__":
    main()
