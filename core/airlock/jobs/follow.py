"""The command a bracket session records: copy what later steps append to the journal to
stdout (the recorder masks and logs it) until the stop file appears.

    python -m airlock.jobs.follow JOURNAL --stop FILE [--ready FILE]

Started by :mod:`airlock.jobs.recorder` only. It imports next to nothing: it runs under the
tracer for the whole job.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from airlock.errors import ExitCode

__all__ = ["follow", "gateway_variables", "is_gateway_variable", "main"]

_POLL_SECONDS = 0.05

# What `airlock run` gives the agent to reach the policy's gateways (gateway/runtime.py).
_GATEWAY_NAMES = ("DATABASE_URL", "PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE")
_GATEWAY_SUFFIXES = ("_DATABASE_URL", "_URL", "_TOKEN", "PGSSLMODE")


def is_gateway_variable(name: str) -> bool:
    return name in _GATEWAY_NAMES or name.endswith(_GATEWAY_SUFFIXES)


def gateway_variables(environ: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if is_gateway_variable(k)}


def _write_ready(path: Path) -> None:
    """Tell start that the recorder is up, with the gateway variables it gave this process."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(gateway_variables(os.environ), handle)
    tmp.rename(path)


def follow(journal: Path, stop: Path, ready: Path | None = None) -> int:
    """Copy what is appended to ``journal`` to stdout until ``stop`` exists; 84 when the
    journal is deleted or truncated under us (tampering)."""
    if ready is not None:
        _write_ready(ready)
    position = 0
    out = sys.stdout.buffer
    while True:
        stopping = stop.exists()
        try:
            size = journal.stat().st_size
        except FileNotFoundError:
            print("airlock: the bracket journal was deleted", flush=True)
            return int(ExitCode.VERIFY_FAILED)
        if size < position:
            print("airlock: the bracket journal was truncated", flush=True)
            return int(ExitCode.VERIFY_FAILED)
        if size > position:
            with journal.open("rb") as handle:
                handle.seek(position)
                chunk = handle.read(size - position)
            position += len(chunk)
            out.write(chunk)
            out.flush()
        if stopping:
            return 0
        time.sleep(_POLL_SECONDS)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m airlock.jobs.follow",
        description="(internal) print lines appended to JOURNAL until --stop FILE exists",
    )
    parser.add_argument("journal", type=Path)
    parser.add_argument("--stop", type=Path, required=True)
    parser.add_argument(
        "--ready", type=Path, help="write the gateway variables the recorder gave us here (JSON)"
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(ExitCode.USAGE) if exc.code == 2 else int(exc.code or 0)
    return follow(args.journal, args.stop, args.ready)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
