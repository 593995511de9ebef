"""A bracket session's recorder: ``airlock run``'s orchestration (:func:`.launch.run_command`)
around :mod:`.follow`, as a long-lived process of its own.

    python -m airlock.jobs.recorder REQUEST.json

The bracket (``airlock ci session start``, an edge) resolves its flags and ``AIRLOCK_*``
variables, writes them with :func:`write_request`, and starts :func:`recorder_argv`; nothing
here parses the CLI's argv or re-enters it. Airlock's own errors go to stderr as
``airlock: error: …`` lines (start shows the last ones when the recorder does not come up).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from airlock.errors import AirlockError, UsageError
from airlock.jobs.launch import RunOptions

__all__ = ["RecorderRequest", "main", "read_request", "recorder_argv", "write_request"]


@dataclass(frozen=True)
class RecorderRequest:
    """Where the bracket's journal, stop and ready files are, and how to run the session."""

    journal: Path
    stop: Path
    ready: Path
    options: RunOptions

    def follow_argv(self) -> list[str]:
        """The recorded command: :mod:`airlock.jobs.follow` on this bracket's files."""
        argv = [sys.executable, "-P", "-m", "airlock.jobs.follow", str(self.journal)]
        return [*argv, "--stop", str(self.stop), "--ready", str(self.ready)]


def recorder_argv(request_file: Path) -> list[str]:
    return [sys.executable, "-P", "-m", "airlock.jobs.recorder", str(request_file)]


def write_request(path: Path, request: RecorderRequest) -> None:
    """Write ``request`` (paths and names, no secrets) as JSON, readable by its owner only."""
    options = {k: (str(v) if v is not None else None) for k, v in asdict(request.options).items()}
    data = {
        "journal": str(request.journal),
        "stop": str(request.stop),
        "ready": str(request.ready),
        "options": options,
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle)


def read_request(path: Path) -> RecorderRequest:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        raw: dict[str, Any] = data["options"]

        def as_path(name: str) -> Path | None:
            return None if raw.get(name) is None else Path(raw[name])

        def as_text(name: str) -> str | None:
            return None if raw.get(name) is None else str(raw[name])

        options = RunOptions(
            sessions=Path(raw["sessions"]),
            policy=as_path("policy"),
            key=as_path("key"),
            pty=as_text("pty"),
            strace=as_text("strace"),
            sandbox=as_text("sandbox"),
            broker=as_text("broker"),
            audience=as_text("audience"),
            state_dir=as_path("state_dir"),
            policy_text=as_text("policy_text"),
            policy_sha256=as_text("policy_sha256"),
        )
        return RecorderRequest(
            Path(data["journal"]), Path(data["stop"]), Path(data["ready"]), options
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(
            f"the recorder's request {path} is unreadable ({type(exc).__name__})",
            hint="the recorder is started by `airlock ci session start`, which writes it",
        ) from exc


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if len(args) != 1:
            raise UsageError("usage: python -m airlock.jobs.recorder REQUEST.json")
        request = read_request(Path(args[0]))
    except AirlockError as exc:
        print(f"airlock: error: {exc.explain()}", file=sys.stderr)
        return int(exc.exit_code)
    from airlock.jobs.launch import run_and_report

    try:
        return run_and_report(request.follow_argv(), request.options, os.environ, quiet=True)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
