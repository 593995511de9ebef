"""Helpers for the GitHub Actions tests: the CLI as a real process, runner files parsed back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["REPO", "Runner", "parse_file_commands", "read_json"]

REPO = Path(__file__).resolve().parents[2]


def parse_file_commands(text: str) -> dict[str, str]:
    """GITHUB_OUTPUT / GITHUB_ENV / GITHUB_STATE as the runner reads them (heredoc blocks)."""
    values: dict[str, str] = {}
    lines = text.split("\n")
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if not line:
            continue
        if "<<" in line:
            name, delimiter = line.split("<<", 1)
            body = []
            while lines[index] != delimiter:
                body.append(lines[index])
                index += 1
            index += 1
            values[name] = "\n".join(body)
        else:
            name, value = line.split("=", 1)
            values[name] = value
    return values


@dataclass
class Runner:
    """A fake GitHub runner step: its files and environment; runs `airlock` as a process."""

    root: Path

    def __post_init__(self) -> None:
        for name in ("output", "env", "state", "summary", "path"):
            (self.root / name).write_text("")
        (self.root / "temp").mkdir()
        (self.root / "work").mkdir()

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "ACTIONS_"))}
        base.update(
            {
                "GITHUB_ACTIONS": "true",
                "GITHUB_REPOSITORY": "acme/api",
                "GITHUB_REPOSITORY_OWNER": "acme",
                "GITHUB_RUN_ID": "4242",
                "GITHUB_OUTPUT": str(self.root / "output"),
                "GITHUB_ENV": str(self.root / "env"),
                "GITHUB_STATE": str(self.root / "state"),
                "GITHUB_STEP_SUMMARY": str(self.root / "summary"),
                "GITHUB_PATH": str(self.root / "path"),
                "RUNNER_TEMP": str(self.root / "temp"),
                "PYTHONPATH": str(REPO / "core"),
            }
        )
        base.update(extra or {})
        return base

    def ci(
        self, *args: str, extra: Mapping[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "airlock._commands.ci", *args],
            env=self.env(extra),
            cwd=self.root / "work",
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def airlock(self, *args: str, extra: Mapping[str, str] | None = None) -> int:
        done = subprocess.run(
            [sys.executable, "-m", "airlock._cli", *args],
            env=self.env(extra),
            cwd=self.root / "work",
            capture_output=True,
            timeout=60,
            check=False,
        )
        return done.returncode

    def read(self, name: str) -> dict[str, str]:
        return parse_file_commands((self.root / name).read_text())

    @property
    def summary(self) -> str:
        return (self.root / "summary").read_text()


def read_json(path: Path) -> object:
    """The JSON document in ``path``."""
    return json.loads(path.read_text())
