"""Moving the relay's lines: the stdio MCP server process, capped line reads, dispatch.

:class:`ServerProcess` starts the MCP server (with the variables it needs, held by Airlock) and
feeds each line it prints to the relay. :func:`read_line` reads one line of at most ``cap``
bytes: a longer one is read to its end and discarded, keeping its first bytes (so the relay can
answer the request it belonged to).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from airlock.errors import ConfigError

__all__ = ["DEFAULT_CAP", "Line", "ServerProcess", "read_line"]

DEFAULT_CAP = 16 * 1024 * 1024
_PREFIX = 4096
# What a stdio server inherits besides the variables the policy names (as the MCP SDK does).
_INHERITED = ("HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER", "LANG", "TMPDIR", "PYTHONPATH")


@dataclass(frozen=True)
class Line:
    """A line read (``data``), or an oversized one (``size`` bytes, ``data`` its first bytes)."""

    data: bytes
    oversized: bool = False
    size: int = 0


async def read_line(reader: asyncio.StreamReader, cap: int) -> Line | None:
    """The next line, an oversized one, or None at EOF."""
    try:
        return Line(await reader.readuntil(b"\n"))
    except asyncio.IncompleteReadError as exc:
        return Line(exc.partial) if exc.partial else None
    except asyncio.LimitOverrunError as exc:
        return await _discard(reader, exc.consumed, cap)


async def _discard(reader: asyncio.StreamReader, consumed: int, cap: int) -> Line:
    prefix, size = b"", 0
    while True:
        data = await reader.read(max(1, consumed))
        if not data:
            return Line(prefix, True, size)
        prefix = prefix or data[:_PREFIX]
        size += len(data)
        if data.endswith(b"\n"):
            return Line(prefix, True, size)
        try:
            rest = await reader.readuntil(b"\n")
            return Line(prefix, True, size + len(rest))
        except asyncio.IncompleteReadError as exc:
            return Line(prefix, True, size + len(exc.partial))
        except asyncio.LimitOverrunError as again:
            consumed = again.consumed


def server_environment(environ: Mapping[str, str], names: Sequence[str]) -> dict[str, str]:
    """The server's environment: a few basics, plus the named (held) variables."""
    missing = [n for n in names if not environ.get(n)]
    if missing:
        raise ConfigError(
            f"the MCP server's variables are not set: {', '.join(missing)}",
            hint="set them in the job's environment (Airlock gives them to the server only)",
        )
    return {k: environ[k] for k in (*_INHERITED, *names) if k in environ}


class ServerProcess:
    """A stdio MCP server: ``send`` writes a line; every line it prints goes to ``on_line``;
    ``on_exit`` is called once with its exit status."""

    def __init__(
        self,
        command: Sequence[str],
        env: Mapping[str, str],
        on_line: Callable[[Line], Awaitable[None]],
        on_exit: Callable[[int | None], Awaitable[None]],
        cap: int = DEFAULT_CAP,
    ) -> None:
        self._command, self._env = list(command), dict(env)
        self._on_line, self._on_exit, self._cap = on_line, on_exit, cap
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()

    async def start(self) -> None:
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self._command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=self._env,
                limit=self._cap,
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot start the MCP server {self._command[0]!r}: {exc.strerror}",
                hint="check the command (is it installed and on PATH?)",
            ) from exc
        self._reader = asyncio.create_task(self._read(), name="airlock-mcp-server")

    async def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        while (line := await read_line(self._proc.stdout, self._cap)) is not None:
            await self._on_line(line)
        await self._on_exit(await self._proc.wait())

    async def send(self, line: bytes) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            return
        async with self._write_lock:
            with contextlib.suppress(ConnectionError, RuntimeError):
                proc.stdin.write(line if line.endswith(b"\n") else line + b"\n")
                await proc.stdin.drain()

    async def close(self, grace: float = 5.0) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(Exception):
                proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, grace)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None
