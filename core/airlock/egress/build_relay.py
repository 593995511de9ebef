"""Build the compiled tunnel relay of the egress proxy (``_relay.c``, see :mod:`.native`):

    python -m airlock.egress.build_relay

It needs a C compiler and the Python headers (Linux: epoll, eventfd); without them the
pure-Python relay runs, with the same outcomes. ``./dev`` runs this when the build is missing
or older than its source.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from airlock.egress.native import SOURCE

__all__ = ["build"]


def build(target: Path | None = None, compiler: str | None = None) -> Path:
    """Compile ``_relay.c`` into ``target`` (default: next to its source); returns the module
    file. Raises ``OSError``/``subprocess.CalledProcessError`` when it cannot be compiled."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    out = (target or SOURCE.parent) / f"_relay{suffix}"
    cc = compiler or os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    include = sysconfig.get_paths()["include"]
    command = [*cc.split(), "-O2", "-shared", "-fPIC", "-Wall", "-Werror", f"-I{include}"]
    subprocess.run(
        [*command, str(SOURCE), "-o", str(out), "-lpthread"], check=True, capture_output=True
    )
    return out


def main() -> int:
    try:
        print(f"built {build()}")
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        print(f"not built (the pure-Python relay runs): {exc} {detail.decode()[:400]}",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
