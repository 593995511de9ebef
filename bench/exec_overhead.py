"""Exec-capture overhead: a 2,000-process workload bare, under `strace -f --seccomp-bpf` alone,
and under `airlock run` (strace + parsing + masking + hash-chained events), in turns in the same
run; and `airlock run -- true` (start-up and sealing alone). CPU is that of every process of
the run, strace included (user + system).

    .venv/bin/python bench/exec_overhead.py [--quick] [--rounds N] [--before TREE]

--before: also run the `airlock` of another checkout (PYTHONPATH=TREE/core), in the same turns.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from _util import adopt_orphans, env_without_ci, interleaved, load_average, run_cpu, tool
from airlock.capture.exectrace import STRACE_ARGS


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="500 processes instead of 2,000")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--before", type=Path, help="a checkout to compare with")
    args = parser.parse_args()
    adopt_orphans()
    count = 500 if args.quick else 2000
    workload = ["sh", "-c", f"i=0; while [ $i -lt {count} ]; do /bin/true; i=$((i+1)); done"]
    env = env_without_ci()
    with tempfile.TemporaryDirectory() as tmp:
        env["XDG_CONFIG_HOME"] = tmp
        trees = {"": env}
        if args.before is not None:
            trees[" [before]"] = {**env, "PYTHONPATH": str(args.before.resolve() / "core")}
        trace = str(Path(tmp, "trace"))
        subjects: dict[str, Callable[[], tuple[float, float]]] = {
            "bare": lambda: run_cpu(workload, env=env),
            "strace -f --seccomp-bpf alone (baseline)": lambda: run_cpu(
                ["strace", *STRACE_ARGS, "-o", trace, "--", *workload], env=env
            ),
        }
        for label, tree_env in trees.items():
            subjects[f"airlock run{label}"] = _airlock(tmp, workload, tree_env)
            subjects[f"airlock run -- true{label}"] = _airlock(tmp, ["true"], tree_env)
        print(
            f"exec overhead, {count} processes, median of {args.rounds} rounds in turns; "
            f"load average before: {load_average()}\n"
        )
        results = interleaved(subjects, args.rounds)
        strace_wall, strace_cpu = results["strace -f --seccomp-bpf alone (baseline)"]
        for name, (wall, cpu) in results.items():
            per = f"{cpu * 1e6 / count:6.0f} us/process" if "true" not in name else ""
            print(f"{name:44} {wall * 1000:8.0f} ms  CPU {cpu * 1000:6.0f} ms {per}")
        for label in trees:
            wall, cpu = results[f"airlock run{label}"]
            print(
                f"\nairlock run{label} / strace alone = {wall / strace_wall:.2f}x time, "
                f"{cpu / strace_cpu:.2f}x CPU (target <= 1.15x time)"
            )
        print(f"load average after: {load_average()}")


def _airlock(
    tmp: str, command: Sequence[str], env: dict[str, str]
) -> Callable[[], tuple[float, float]]:
    def run() -> tuple[float, float]:
        sessions = Path(tmp, "s")
        try:
            return run_cpu(
                [tool("airlock"), "run", "--quiet", "--sessions", str(sessions), "--", *command],
                env=env,
            )
        finally:
            shutil.rmtree(sessions, ignore_errors=True)

    return run


if __name__ == "__main__":
    main()
