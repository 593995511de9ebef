"""Helpers for the GitHub Actions tests: the CLI as a real process, runner files parsed back."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["REPO", "Runner", "parse_file_commands", "read_json", "running_broker"]

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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running_broker(config: Path, home: Path) -> Iterator[tuple[str, bytearray]]:
    """`airlock broker serve --config CONFIG` on a free port; yields (URL, stderr holder).

    The second item is filled with the broker's stderr once it stopped (for "no secret in the
    broker's log" checks); read it after the block.
    """
    import httpx

    port = _free_port()
    serve = ["broker", "serve", "--config", str(config), "--port", str(port)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "airlock._cli", *serve],
        env={**os.environ, "XDG_CONFIG_HOME": str(home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the broker did not start"
        time.sleep(0.1)
    log = bytearray()
    try:
        yield url, log
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=20)
        log.extend(stderr)
