"""Build the compiled row path of the PostgreSQL gateway (``_rows.c``, see :mod:`.rowpath`):

    python -m airlock.gateway.postgres.build_rows

It needs a C compiler and the Python headers; without them the pure-Python row path runs, with
the same results. ``./dev setup`` runs this when the build is missing or older than its source.
"""

from __future__ import annotations

import sys
from pathlib import Path

from airlock.cbuild import build_main, compile_module
from airlock.gateway.postgres.rowpath import SOURCE

__all__ = ["build"]


def build(target: Path | None = None, compiler: str | None = None) -> Path:
    """Compile ``_rows.c`` into ``target`` (default: next to its source); returns the module
    file. Raises ``OSError``/``subprocess.CalledProcessError`` when it cannot be compiled."""
    return compile_module(SOURCE, "_rows", target, compiler, ())


if __name__ == "__main__":
    sys.exit(build_main(build, "pure-Python row path"))
