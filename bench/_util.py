"""Small helpers shared by the benchmarks: corpora, timing, printing ratios."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import socket
import subprocess
import sys
import time
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
        subprocess.run(
            argv if not shell else " ".join(argv),
            stdout=stdout,
            stderr=subprocess.DEVNULL,
            check=True,
            env=env,
            shell=shell,
        )
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
    return {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "CI_", "ACTIONS_"))}


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


def serve_until_killed(start: Callable[[], Awaitable[Any]]) -> None:
    """Run a gateway role process: ``await start()``, say "ready", serve until killed, close."""

    async def main() -> None:
        gateway = await start()
        print("ready", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await gateway.close()

    asyncio.run(main())


def pg_gateway_config(port: int, mask_columns: list[str]) -> Any:
    """The PostgreSQL gateway of the benchmarks: local upstream without TLS, masked columns."""
    from airlock.policy.gateways import PostgresGatewayConfig

    return PostgresGatewayConfig.model_validate(
        {"name": "bench", "kind": "postgres",
         "upstream": {"host": "127.0.0.1", "port": port, "database": "postgres", "tls": "disable"},
         "credential": {"user": "postgres"}, "mask_columns": mask_columns, "mask_values": True}
    )  # fmt: skip
