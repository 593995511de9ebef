"""Sandbox start-up: `airlock run --sandbox required -- true` vs `--sandbox off`; and the exec
workload (500 processes) with the sandbox on vs off. Runs alternate (off, required, off, ...),
so both see the same load; each figure is the median wall time and the median CPU time of the
whole process tree (airlock, strace, bwrap, the agent): from a cpuacct cgroup per run when this
runs as root on cgroup v1 (strace -DDD leaves airlock's tree, so wait4's rusage misses it),
else from wait4's rusage (marked "tree*": without strace). ``--before DIR`` also runs the code
in DIR/core (e.g. a checkout of the previous commit), interleaved, as the "before" figures.

    .venv/bin/python bench/sandbox_startup.py [--repeat N] [--exec-repeat N] [--before DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from _util import env_without_ci, tool

WORKLOAD = ["sh", "-c", "i=0; while [ $i -lt 500 ]; do /bin/true; i=$((i+1)); done"]


CGROUP = Path("/sys/fs/cgroup/cpuacct")


def run_once(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process tree) of one run."""
    group = CGROUP / f"airlock-bench-{os.getpid()}"
    use_group = os.geteuid() == 0 and CGROUP.is_dir()
    if use_group:
        group.mkdir(exist_ok=True)
        before = int((group / "cpuacct.usage").read_text())
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=(lambda: (group / "cgroup.procs").write_text(str(os.getpid())))
        if use_group
        else None,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bench: {argv} exited {os.waitstatus_to_exitcode(status)}")
    if use_group:
        time.sleep(0.05)  # strace, detached, exits just after the command
        return wall, (int((group / "cpuacct.usage").read_text()) - before) / 1e9
    return wall, usage.ru_utime + usage.ru_stime


def compare(
    base: list[str], command: list[str], envs: dict[str, dict[str, str]], repeat: int
) -> None:
    runs: dict[tuple[str, str], list[tuple[float, float]]] = {
        (code, mode): [] for code in envs for mode in ("off", "required")
    }
    for _ in range(repeat):
        for code, mode in runs:
            argv = [*base, "--sandbox", mode, "--", *command]
            runs[code, mode].append(run_once(argv, envs[code]))
    wall = {k: statistics.median(w for w, _ in r) for k, r in runs.items()}
    cpu = {k: statistics.median(c for _, c in r) for k, r in runs.items()}
    for code, mode in runs:
        print(f"  {code:<6} --sandbox {mode:<9} wall {wall[code, mode] * 1000:8.1f} ms   "
              f"cpu {cpu[code, mode] * 1000:8.1f} ms")  # fmt: skip
    for code in envs:
        on, off = (code, "required"), (code, "off")
        print(f"  {code}: required - off: wall {1000 * (wall[on] - wall[off]):+.1f} ms "
              f"({wall[on] / wall[off]:.2f}x), cpu {1000 * (cpu[on] - cpu[off]):+.1f} ms "
              f"({cpu[on] / cpu[off]:.2f}x)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=11, help="start-up runs per mode")
    parser.add_argument("--exec-repeat", type=int, default=5, help="exec-workload runs per mode")
    parser.add_argument("--before", type=Path, help="a checkout whose core/ is the 'before' code")
    args = parser.parse_args()
    env = env_without_ci()
    with tempfile.TemporaryDirectory() as tmp:
        env["XDG_CONFIG_HOME"] = tmp
        envs = {"after": env}
        if args.before is not None:
            envs = {"before": {**env, "PYTHONPATH": str(args.before / "core")}, "after": env}
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
        compare(base, ["true"], envs, args.repeat)
        print(f"exec workload, 500 processes, median of {args.exec_repeat} (target: <= 1.05x)")
        compare(base, WORKLOAD, envs, args.exec_repeat)
        print(f"load average after: {os.getloadavg()}")
        with contextlib.suppress(OSError):
            (CGROUP / f"airlock-bench-{os.getpid()}").rmdir()


if __name__ == "__main__":
    main()
