"""Output throughput: `airlock run -- cat BIG` vs plain `cat BIG | cat` vs `asciinema rec`.

Every byte goes through the masker (built-in rules + one literal secret), is shown, and is
recorded as a hash-chained event. Baselines measured in the same run, in turns with the
subjects, on the same file: a bare pipe (`cat BIG | cat`), a copy of the file into the
sessions directory (what its disk can take), and asciinema 2.x recording the same command
(a peer recorder). CPU is that of every process of the run (user + system).

    .venv/bin/python bench/output_throughput.py [--quick] [--rounds N] [--sessions DIR]
        [--before TREE] [--sandbox MODE[,MODE...]] [--outputs pipes,pty]

--sessions: where the logs go (default: a temporary directory; /dev/shm takes the disk out).
--before: also run the `airlock` of another checkout (PYTHONPATH=TREE/core), in the same turns.
--sandbox: run each airlock subject once per mode (e.g. `off,required`), in the same turns, and
print required/off ratios (issue 10: the sandbox must cost <= 5 %). Default: the policy's mode.
--outputs: which airlock subjects to run (default both: pipes and a pty).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from _util import (
    adopt_orphans,
    env_without_ci,
    interleaved,
    load_average,
    log_corpus,
    run_cpu,
    tool,
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="20 MB instead of 200 MB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sessions", type=Path, help="directory for the session logs")
    parser.add_argument("--before", type=Path, help="a checkout to compare with")
    parser.add_argument("--sandbox", help="comma-separated --sandbox modes, e.g. off,required")
    parser.add_argument("--outputs", default="pipes,pty", help="pipes, pty or pipes,pty")
    args = parser.parse_args()
    modes = args.sandbox.split(",") if args.sandbox else [""]
    outputs = [o for o in (("never", "pipes"), ("always", "pty")) if o[1] in args.outputs]
    adopt_orphans()
    corpus = log_corpus(20 if args.quick else 200)
    nbytes = corpus.stat().st_size
    env = env_without_ci()
    env["BENCH_SECRET"] = "bench-secret-value-0123456789abcdef"
    with tempfile.TemporaryDirectory(dir=args.sessions) as tmp:
        policy = Path(tmp, "policy.yaml")
        policy.write_text("capture: {exec: required}\nmask: {env: [BENCH_SECRET]}\n")
        env["XDG_CONFIG_HOME"] = tmp
        trees = {"": env}
        if args.before is not None:
            trees[" [before]"] = {**env, "PYTHONPATH": str(args.before.resolve() / "core")}
        subjects: dict[str, Callable[[], tuple[float, float]]] = {
            "bare pipe: cat BIG | cat (baseline)": lambda: run_cpu(
                ["cat", str(corpus), "|", "cat"], shell=True, env=env
            ),
            "copy to the sessions dir: cat BIG > F": lambda: _fresh(
                tmp, lambda out: run_cpu(["cat", str(corpus), ">", str(out)], shell=True, env=env)
            ),
        }
        if ("always", "pty") in outputs:
            subjects[PEER] = lambda: _fresh(
                tmp,
                lambda out: run_cpu(
                    [
                        tool("asciinema"),
                        "rec",
                        "-q",
                        "--overwrite",
                        "-c",
                        f"cat {corpus}",
                        str(out),
                    ],
                    env=env,
                ),
            )
        for label, tree_env in trees.items():
            for pty, name in outputs:
                for sandbox in modes:
                    subjects[_name(name, label, sandbox)] = _airlock(
                        tmp, policy, pty, corpus, tree_env, sandbox
                    )
        print(
            f"output throughput, {nbytes / 1e6:.0f} MB of log text, median of {args.rounds} "
            f"rounds in turns, sessions in {tmp}; load average before: {load_average()}\n"
        )
        results = interleaved(subjects, args.rounds)
        bare = results["bare pipe: cat BIG | cat (baseline)"][0]
        for name, (wall, cpu) in results.items():
            print(
                f"{name:60} {wall * 1000:8.0f} ms {nbytes / wall / 1e6:7.0f} MB/s  "
                f"CPU {cpu * 1000:6.0f} ms = {cpu * 1000 / (nbytes / 1e6):5.2f} ms/MB"
                f"  ({bare / wall:.2f}x bare)"
            )
        print()
        for label in trees:
            for sandbox in modes if PEER in results else ():
                pty = results[_name("pty", label, sandbox)][0]
                speed = results[PEER][0] / pty
                print(f"{_name('pty', label, sandbox)} vs asciinema: {speed:.2f}x its speed")
            for _, name in outputs if "off" in modes else ():
                off = results[_name(name, label, "off")]
                for sandbox in (m for m in modes if m != "off"):
                    on = results[_name(name, label, sandbox)]
                    print(
                        f"{name}{label}: --sandbox {sandbox} / off = {on[0] / off[0]:.2f}x time, "
                        f"{on[1] / off[1]:.2f}x CPU (target <= 1.05x)"
                    )
        print(f"load average after: {load_average()}")


PEER = "asciinema rec -c 'cat BIG' (peer)"


def _name(output: str, label: str, sandbox: str) -> str:
    mode = f", --sandbox {sandbox}" if sandbox else ""
    return f"airlock run -- cat BIG ({output}{mode}){label}"


def _fresh(tmp: str, run: Callable[[Path], tuple[float, float]]) -> tuple[float, float]:
    out = Path(tmp, "copy")
    try:
        return run(out)
    finally:
        out.unlink(missing_ok=True)


def _airlock(
    tmp: str, policy: Path, mode: str, corpus: Path, env: dict[str, str], sandbox: str
) -> Callable[[], tuple[float, float]]:
    chosen = ("--sandbox", sandbox) if sandbox else ()

    def run() -> tuple[float, float]:
        sessions = Path(tmp, "sessions")
        try:
            return run_cpu(
                [
                    *(tool("airlock"), "run", "--quiet", "--pty", mode, *chosen),
                    *("--policy", str(policy)),
                    *("--sessions", str(sessions), "--", "cat", str(corpus)),
                ],
                env=env,
                cwd=corpus.parent,  # the workspace: a sandbox shows the agent only that
            )
        finally:
            shutil.rmtree(sessions, ignore_errors=True)

    return run


if __name__ == "__main__":
    main()
