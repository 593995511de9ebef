"""Airlock's own CPU (the `airlock run` process and its threads, not strace or the workload)
for a 2,000-process workload and for `-- true`, this checkout against another, in turns.

The total CPU that `exec_overhead.py` reports is mostly strace's and the workload's, which swing
by hundreds of ms on a loaded machine; the recorder's own share is what this repository's code
decides, and it moves far less with load.

    .venv/bin/python bench/exec_own_cpu.py --before DIR [--rounds N] [--count N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from _util import adopt_orphans, env_without_ci, load_average, run_cpu

_WRAPPER = """\
import atexit, resource, runpy, sys
def own():
    r = resource.getrusage(resource.RUSAGE_SELF)
    with open({out!r}, "w") as f:
        f.write(str(r.ru_utime + r.ru_stime))
atexit.register(own)
sys.argv = ["airlock", *sys.argv[1:]]
runpy.run_module("airlock._cli", run_name="__main__")
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", type=Path, required=True, help="a checkout to compare with")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=2000, help="processes in the workload")
    args = parser.parse_args()
    adopt_orphans()
    loop = f"i=0; while [ $i -lt {args.count} ]; do /bin/true; i=$((i+1)); done"
    commands = {"workload": ["sh", "-c", loop], "true": ["true"]}
    trees = {"after": Path(__file__).resolve().parents[1], "before": args.before.resolve()}
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp, "own"))
        wrapper = _WRAPPER.format(out=out)

        def run(tree: Path, command: list[str]) -> tuple[float, float, float]:
            env = {**env_without_ci(), "XDG_CONFIG_HOME": tmp, "PYTHONPATH": str(tree / "core")}
            sessions = str(Path(tmp, "s"))
            argv = [sys.executable, "-c", wrapper, "run", "--quiet", "--sessions", sessions]
            wall, cpu = run_cpu([*argv, "--", *command], env=env)
            return wall, cpu, float(Path(out).read_text())

        print(f"load average before: {load_average()}")
        for tree in trees.values():
            run(tree, ["true"])  # untimed: caches
        got: dict[tuple[str, str], list[tuple[float, float, float]]] = {
            (t, c): [] for t in trees for c in commands
        }
        for _ in range(args.rounds):
            for name, tree in trees.items():
                for label, command in commands.items():
                    got[(name, label)].append(run(tree, command))
        own = {key: statistics.median(s[2] for s in samples) for key, samples in got.items()}
        for (name, label), samples in got.items():
            wall = statistics.median(s[0] for s in samples)
            cpu = statistics.median(s[1] for s in samples)
            print(
                f"{name:6} {label:8} wall {wall * 1000:6.0f} ms  all processes' CPU "
                f"{cpu * 1000:6.0f} ms  airlock's own CPU {own[(name, label)] * 1000:5.0f} ms"
            )
        for name in trees:
            per = (own[(name, "workload")] - own[(name, "true")]) * 1e6 / args.count
            print(f"{name}: airlock's own CPU per process (workload minus `true`): {per:.0f} us")
        ratio = own[("after", "workload")] / own[("before", "workload")]
        print(f"after / before, airlock's own CPU for the workload: {ratio:.2f}x")
        print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
