"""Sandbox start-up: `airlock run --sandbox required -- true` vs `--sandbox off`, same run; and
the exec workload of bench/exec_overhead.py with the sandbox on vs off.

    .venv/bin/python bench/sandbox_startup.py [--repeat N]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _util import env_without_ci, row, timed, tool


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=7, help="runs per figure (median)")
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
        workload = ["sh", "-c", "i=0; while [ $i -lt 500 ]; do /bin/true; i=$((i+1)); done"]
        print(f"sandbox start-up, median of {args.repeat}\n")
        off = timed([*base, "--sandbox", "off", "--", "true"], env=env, repeat=args.repeat)
        print(row("airlock run --sandbox off -- true (baseline)", off))
        on = timed([*base, "--sandbox", "required", "--", "true"], env=env, repeat=args.repeat)
        print(row("airlock run --sandbox required -- true", on))
        print(f"\nrequired / off = {on / off:.2f}x time; added {1000 * (on - off):.0f} ms "
              "(target <= 50 ms)\n")  # fmt: skip
        off = timed([*base, "--sandbox", "off", "--", *workload], env=env, repeat=3)
        print(row("500 processes, --sandbox off (baseline)", off))
        on = timed([*base, "--sandbox", "required", "--", *workload], env=env, repeat=3)
        print(row("500 processes, --sandbox required", on))
        print(f"\nexec workload: required / off = {on / off:.2f}x time (target <= 1.05x)")


if __name__ == "__main__":
    main()
