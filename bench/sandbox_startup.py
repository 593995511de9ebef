"""Sandbox start-up: `airlock run --sandbox required -- true` vs `--sandbox off`; and the exec
workload (500 processes) with the sandbox on vs off. Runs alternate (off, required, off, ...),
so both see the same load; each figure is the median wall time and the median CPU time
(user+sys of airlock and everything it started, from wait4's rusage).

    .venv/bin/python bench/sandbox_startup.py [--repeat N] [--exec-repeat N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from _util import env_without_ci, tool

WORKLOAD = ["sh", "-c", "i=0; while [ $i -lt 500 ]; do /bin/true; i=$((i+1)); done"]


def run_once(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process tree) of one run."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"bench: {argv} exited {proc.returncode}")
    return wall, usage.ru_utime + usage.ru_stime


def compare(base: list[str], command: list[str], env: dict[str, str], repeat: int) -> None:
    runs: dict[str, list[tuple[float, float]]] = {"off": [], "required": []}
    for _ in range(repeat):
        for mode in runs:
            runs[mode].append(run_once([*base, "--sandbox", mode, "--", *command], env))
    wall = {m: statistics.median(w for w, _ in r) for m, r in runs.items()}
    cpu = {m: statistics.median(c for _, c in r) for m, r in runs.items()}
    for mode in runs:
        print(
            f"  --sandbox {mode:<9} wall {wall[mode] * 1000:8.1f} ms   cpu {cpu[mode] * 1000:8.1f} ms"
        )
    print(f"  required - off: wall {1000 * (wall['required'] - wall['off']):+.1f} ms "
          f"({wall['required'] / wall['off']:.2f}x), cpu {1000 * (cpu['required'] - cpu['off']):+.1f} ms "
          f"({cpu['required'] / cpu['off']:.2f}x)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=11, help="start-up runs per mode")
    parser.add_argument("--exec-repeat", type=int, default=5, help="exec-workload runs per mode")
    args = parser.parse_args()
    env = env_without_ci()
    with tempfile.TemporaryDirectory() as tmp:
        env["XDG_CONFIG_HOME"] = tmp
        base = [
            tool("airlock"),
            "run",
            "--quiet",
            "--pty",
            "never",
            "--sessions",
            str(Path(tmp, "s")),
        ]
        print(f"load average before: {os.getloadavg()}")
        print(f"start-up, `-- true`, median of {args.repeat} (target: <= 50 ms added)")
        compare(base, ["true"], env, args.repeat)
        print(f"exec workload, 500 processes, median of {args.exec_repeat} (target: <= 1.05x)")
        compare(base, WORKLOAD, env, args.exec_repeat)
        print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
