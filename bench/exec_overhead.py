"""Exec-capture overhead: a 2,000-process workload bare, under `strace -f --seccomp-bpf` alone,
and under `airlock run` (strace + parsing + masking + hash-chained events), same run.

    .venv/bin/python bench/exec_overhead.py [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _util import env_without_ci, row, timed, tool
from airlock.capture.exectrace import STRACE_ARGS


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="500 processes instead of 2,000")
    args = parser.parse_args()
    count = 500 if args.quick else 2000
    workload = ["sh", "-c", f"i=0; while [ $i -lt {count} ]; do /bin/true; i=$((i+1)); done"]
    env = env_without_ci()
    with tempfile.TemporaryDirectory() as tmp:
        env["XDG_CONFIG_HOME"] = tmp
        print(f"exec overhead, {count} processes, median of 3\n")
        bare = timed(workload, env=env)
        print(row("bare", bare))
        strace = timed(
            ["strace", *STRACE_ARGS, "-o", str(Path(tmp, "trace")), "--", *workload], env=env
        )
        print(row("strace -f --seccomp-bpf alone (baseline)", strace))
        airlock = timed(
            [tool("airlock"), "run", "--quiet", "--sessions", str(Path(tmp, "s")), "--", *workload],
            env=env,
        )
        print(row("airlock run", airlock))
        print(f"\nairlock run / strace alone = {airlock / strace:.2f}x time (target <= 1.15x)")
        print(f"strace alone / bare = {strace / bare:.2f}x time")


if __name__ == "__main__":
    main()
