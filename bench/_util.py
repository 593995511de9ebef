"""Small helpers shared by the benchmarks: corpora, timing, printing ratios."""

from __future__ import annotations

import asyncio
import ctypes
import os
import random
import resource
import shutil
import socket
import subprocess
import sys
import time
import statistics
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / ".data"
VENV_BIN = Path(sys.executable).parent


# The vocabulary of the generated log text (the masking corpus adds to it).
LOG_WORDS = [
    "build",
    "test",
    "compile",
    "link",
    "fetch",
    "resolve",
    "install",
    "cache",
    "hit",
    "miss",
    "warning",
    "error",
    "ok",
]


def tool(name: str) -> str:
    """A command from the project's venv if it is there, else from PATH."""
    local = VENV_BIN / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        raise SystemExit(f"bench: {name} is not installed (./dev setup installs the bench tools)")
    return found


def log_corpus(size_mb: int) -> Path:
    """A file of realistic agent/CI log text (compiler lines, test output, JSON), cached."""
    DATA.mkdir(exist_ok=True)
    path = DATA / f"log-{size_mb}mb.txt"
    if path.exists() and path.stat().st_size >= size_mb * 1_000_000:
        return path
    rng = random.Random(42)
    lines = []
    for i in range(20_000):
        kind = i % 4
        if kind == 0:
            lines.append(
                f"[{i:06d}] {rng.choice(LOG_WORDS)} src/module_{rng.randint(0, 999)}.py:{rng.randint(1, 800)} {' '.join(rng.choices(LOG_WORDS, k=8))}"
            )
        elif kind == 1:
            lines.append(
                f'{{"level":"info","ts":{1700000000 + i},"msg":"{rng.choice(LOG_WORDS)}","id":"{rng.getrandbits(64):016x}"}}'
            )
        elif kind == 2:
            lines.append(
                f"PASSED tests/test_{rng.randint(0, 99)}.py::test_case_{rng.randint(0, 9999)} [{rng.randint(0, 100)}%]"
            )
        else:
            lines.append(" ".join(rng.choices(LOG_WORDS, k=14)))
    block = ("\n".join(lines) + "\n").encode()
    with path.open("wb") as out:
        written = 0
        while written < size_mb * 1_000_000:
            out.write(block)
            written += len(block)
    return path


def _run_once(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None,
    shell: bool,
    stdout: int | None,
    cwd: Path | None = None,
) -> None:
    """Run ``argv`` to its end (a failure aborts the benchmark); stderr is dropped."""
    subprocess.run(
        argv if not shell else " ".join(argv),
        stdout=stdout,
        stderr=subprocess.DEVNULL,
        check=True,
        env=env,
        shell=shell,
        cwd=cwd,
    )


def timed(
    argv: Sequence[str],
    *,
    repeat: int = 3,
    stdout: int | None = subprocess.DEVNULL,
    env: dict[str, str] | None = None,
    shell: bool = False,
) -> float:
    """Median wall-clock seconds of ``argv`` over ``repeat`` runs (failures abort)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        _run_once(argv, env=env, shell=shell, stdout=stdout)
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def row(
    name: str, seconds: float, size_bytes: int | None = None, baseline: float | None = None
) -> str:
    parts = [f"{name:<44} {seconds * 1000:9.1f} ms"]
    if size_bytes is not None:
        parts.append(f"{size_bytes / seconds / 1e6:9.1f} MB/s")
    if baseline is not None:
        parts.append(f"ratio {baseline / seconds:6.2f}x of baseline speed")
    return "  ".join(parts)


def env_without_ci() -> dict[str, str]:
    """This environment without CI variables, and with bytecode caching on (an installed
    package has its bytecode compiled; without it every start compiles Airlock's modules)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "CI_", "ACTIONS_"))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a server process the benchmark starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 20) -> None:
    """Return once something accepts connections on 127.0.0.1:``port``; exit after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"bench: nothing listens on {port}")


def serve_until_killed(
    start: Callable[[], Awaitable[Any]],
    new_loop: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> None:
    """Run a gateway role process: ``await start()``, say "ready", serve until killed, close
    (in ``new_loop()``'s event loop when given)."""

    async def main() -> None:
        gateway = await start()
        print("ready", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await gateway.close()

    if new_loop is None:
        asyncio.run(main())
    else:
        new_loop().run_until_complete(main())


def pg_gateway_config(port: int, mask_columns: list[str]) -> Any:
    """The PostgreSQL gateway of the benchmarks: local upstream without TLS, masked columns."""
    from airlock.policy.gateways import PostgresGatewayConfig

    return PostgresGatewayConfig.model_validate(
        {"name": "bench", "kind": "postgres",
         "upstream": {"host": "127.0.0.1", "port": port, "database": "postgres", "tls": "disable"},
         "credential": {"user": "postgres"}, "mask_columns": mask_columns, "mask_values": True}
    )  # fmt: skip


_PR_SET_CHILD_SUBREAPER = 36


def adopt_orphans() -> None:
    """Make this process the subreaper of what it starts, so that a detached grandchild (strace
    under ``-DDD``) is reaped here and its CPU time counts in :func:`run_cpu`."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _reap_orphans() -> None:
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def run_cpu(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    shell: bool = False,
    stdout: int | None = subprocess.DEVNULL,
    cwd: Path | None = None,
) -> tuple[float, float]:
    """One run of ``argv``: (wall seconds, CPU seconds of it and everything it started)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    _run_once(argv, env=env, shell=shell, stdout=stdout, cwd=cwd)
    wall = time.perf_counter() - start
    _reap_orphans()  # strace, detached, may end a moment after the command
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu


def interleaved(
    subjects: dict[str, Callable[[], tuple[float, float]]], rounds: int
) -> dict[str, tuple[float, float]]:
    """Run each subject once per round, in turns (A B C A B C ...); median (wall, CPU) each.
    One untimed round first (bytecode caches, page cache)."""
    for run in subjects.values():
        run()
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in subjects}
    for _ in range(rounds):
        for name, run in subjects.items():
            samples[name].append(run())
    return {
        name: (statistics.median(w for w, _ in got), statistics.median(c for _, c in got))
        for name, got in samples.items()
    }


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())
