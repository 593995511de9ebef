"""Output throughput: `airlock run -- cat BIG` vs plain `cat BIG | cat` vs `asciinema rec`.

Every byte goes through the masker (built-in rules + one literal secret), is shown, and is
recorded as a hash-chained event. Baselines measured in the same run on the same file:
a bare pipe (`cat BIG | cat`), and asciinema 2.x recording the same command (a peer recorder).

    .venv/bin/python bench/output_throughput.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from pathlib import Path

from _util import env_without_ci, log_corpus, row, timed, tool


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="20 MB instead of 200 MB")
    args = parser.parse_args()
    size = 20 if args.quick else 200
    corpus = log_corpus(size)
    nbytes = corpus.stat().st_size
    env = env_without_ci()
    env["BENCH_SECRET"] = "bench-secret-value-0123456789abcdef"
    with tempfile.TemporaryDirectory() as tmp:
        policy = Path(tmp, "policy.yaml")
        policy.write_text("capture: {exec: required}\nmask: {env: [BENCH_SECRET]}\n")
        env["XDG_CONFIG_HOME"] = tmp
        airlock = tool("airlock")
        sessions = Path(tmp, "sessions")
        print(f"output throughput, {nbytes / 1e6:.0f} MB of log text, median of 3\n")
        bare = timed(["cat", str(corpus), "|", "cat"], shell=True, env=env)
        print(row("bare pipe: cat BIG | cat (baseline)", bare, nbytes))
        cast = Path(tmp, "out.cast")
        peer = timed(
            [tool("asciinema"), "rec", "-q", "--overwrite", "-c", f"cat {corpus}", str(cast)],
            env=env,
        )
        print(row("asciinema rec -c 'cat BIG' (peer)", peer, nbytes, bare))
        for mode in ("never", "always"):
            seconds = timed(
                [
                    airlock,
                    "run",
                    "--quiet",
                    "--pty",
                    mode,
                    "--policy",
                    str(policy),
                    "--sessions",
                    str(sessions),
                    "--",
                    "cat",
                    str(corpus),
                ],
                env=env,
            )
            label = "pipes" if mode == "never" else "pty"
            print(row(f"airlock run -- cat BIG ({label})", seconds, nbytes, bare))
            if mode == "always":
                print(f"{'':44} airlock (pty) vs asciinema: {peer / seconds:.2f}x faster")
        recorded = sum(p.stat().st_size for p in sessions.rglob("events.jsonl"))
        print(
            f"\nrecorded {recorded / 1e6:.0f} MB of events over {len(list(sessions.iterdir()))} sessions"
        )
    subprocess.run(["true"], check=True)
    os.sync()


if __name__ == "__main__":
    main()
