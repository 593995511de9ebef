"""Running the installed ``airlock`` CLI in tests: a clean environment, a session to read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

AIRLOCK = str(Path(sys.executable).parent / "airlock")


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The test process' environment without CI variables, with its own config home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "CI_", "ACTIONS_"))}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    env.update(extra)
    return env


def run_airlock(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, **kw: Any
) -> subprocess.CompletedProcess[bytes]:
    kw.setdefault("timeout", 60)
    return subprocess.run(
        [AIRLOCK, *args], env=env or clean_env(tmp_path), capture_output=True, check=False, **kw
    )


def only_session(sessions: Path) -> Path:
    found = [p for p in sessions.iterdir() if p.is_dir()]
    assert len(found) == 1, found
    return found[0]


def events(session: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (session / "events.jsonl").read_text().splitlines()]
