"""Build the compiled parts of the PostgreSQL gateway: the row path (``_rows.c``, see
:mod:`.rowpath`) and the I/O loop (``_loop.c``, see :mod:`.native`):

    python -m airlock.gateway.postgres.build_rows

They need a C compiler and the Python headers; without them the pure-Python row path and
asyncio's transports run, with the same results. ``./dev setup`` runs this when a build is
missing or older than its source.
"""

from __future__ import annotations

import sys
from pathlib import Path

from airlock.cbuild import build_main, compile_module
from airlock.gateway.postgres.native import SOURCE as LOOP_SOURCE
from airlock.gateway.postgres.rowpath import SOURCE

__all__ = ["build", "build_loop"]


def build(target: Path | None = None, compiler: str | None = None) -> Path:
    """Compile ``_rows.c`` into ``target`` (default: next to its source); returns the module
    file. Raises ``OSError``/``subprocess.CalledProcessError`` when it cannot be compiled."""
    return compile_module(SOURCE, "_rows", target, compiler, ())


def build_loop(target: Path | None = None, compiler: str | None = None) -> Path:
    """Compile ``_loop.c`` likewise (Linux: epoll)."""
    return compile_module(LOOP_SOURCE, "_loop", target, compiler, ())


if __name__ == "__main__":
    failed = build_main(build, "pure-Python row path")
    sys.exit(build_main(build_loop, "asyncio relay") or failed)
