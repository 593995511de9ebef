"""Build the compiled tunnel relay of the egress proxy (``_relay.c``, see :mod:`.native`):

    python -m airlock.egress.build_relay

It needs a C compiler and the Python headers (Linux: epoll, eventfd); without them the
pure-Python relay runs, with the same outcomes. ``./dev`` runs this when the build is missing
or older than its source.
"""

from __future__ import annotations

import sys
from pathlib import Path

from airlock.cbuild import build_main, compile_module
from airlock.egress.native import SOURCE

__all__ = ["build"]


def build(target: Path | None = None, compiler: str | None = None) -> Path:
    """Compile ``_relay.c`` into ``target`` (default: next to its source); returns the module
    file. Raises ``OSError``/``subprocess.CalledProcessError`` when it cannot be compiled."""
    return compile_module(SOURCE, "_relay", target, compiler, ("pthread",))


if __name__ == "__main__":
    sys.exit(build_main(build, "pure-Python relay"))
