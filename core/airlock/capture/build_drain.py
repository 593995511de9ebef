"""Build the compiled pty drain of the runner (``_ptydrain.c``, see :mod:`.drain`):

    python -m airlock.capture.build_drain

It needs a C compiler and the Python headers (Linux: eventfd, pthreads); without them the
runner's loop reads the pty itself, with the same output. ``./dev`` runs this when the build is
missing or older than its source.
"""

from __future__ import annotations

import sys
from pathlib import Path

from airlock.capture.drain import SOURCE
from airlock.cbuild import build_main, compile_module

__all__ = ["build"]


def build(target: Path | None = None, compiler: str | None = None) -> Path:
    """Compile ``_ptydrain.c`` into ``target`` (default: next to its source); returns the module
    file. Raises ``OSError``/``subprocess.CalledProcessError`` when it cannot be compiled."""
    return compile_module(SOURCE, "_ptydrain", target, compiler, ("pthread",))


if __name__ == "__main__":
    sys.exit(build_main(build, "loop's own pty read"))
