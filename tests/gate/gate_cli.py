"""Run `airlock gate …` as a real process, also while `gate` is not yet registered in _cli."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

_LAUNCHER = (
    "import sys\n"
    "from airlock import _cli\n"
    "if 'gate' not in _cli._COMMANDS:\n"
    "    _cli._COMMANDS = (*_cli._COMMANDS, 'gate')\n"
    "sys.exit(_cli.main(sys.argv[1:]))\n"
)


def start(args: list[str], *, cwd: Path, **kwargs: object) -> subprocess.Popen[str]:
    """Start ``airlock gate ARGS`` in ``cwd``; stdout/stderr captured as text."""
    env = {**os.environ, **kwargs.pop("env", {})}  # type: ignore[dict-item]
    return subprocess.Popen(
        [sys.executable, "-c", _LAUNCHER, "gate", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,  # type: ignore[call-overload]
    )


def run(
    args: list[str], *, cwd: Path, timeout: float = 60, **kwargs: object
) -> tuple[int, str, str]:
    """Run ``airlock gate ARGS`` to completion: (exit status, stdout, stderr)."""
    proc = start(args, cwd=cwd, **kwargs)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def run_here(args: list[str]) -> int:
    """``airlock gate ARGS`` in this process through the real dispatcher (``_cli.main``)."""
    from airlock import _cli

    if "gate" in _cli._COMMANDS:
        return _cli.main(["gate", *args])
    saved = _cli._COMMANDS
    _cli._COMMANDS = (*saved, "gate")
    try:
        return _cli.main(["gate", *args])
    finally:
        _cli._COMMANDS = saved
