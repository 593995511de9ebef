"""Compile the project's own small C helpers (the PostgreSQL gateway's row path, the egress
proxy's tunnel relay) with the system's C compiler and the Python headers. Each helper has a
pure-Python twin with the same results, which runs when the build is missing."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["build_main", "compile_module"]


def compile_module(
    source: Path,
    name: str,
    target: Path | None = None,
    compiler: str | None = None,
    libraries: Sequence[str] = (),
) -> Path:
    """Compile ``source`` into the extension module ``name`` in ``target`` (default: next to its
    source); returns the module file. Raises ``OSError``/``subprocess.CalledProcessError`` when it
    cannot be compiled. ``compiler`` (else ``$CC``, else Python's own) may carry flags."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    out = (target or source.parent) / f"{name}{suffix}"
    cc = compiler or os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    include = sysconfig.get_paths()["include"]
    command = [*cc.split(), "-O2", "-shared", "-fPIC", "-Wall", "-Werror", f"-I{include}"]
    libs = [f"-l{lib}" for lib in libraries]
    subprocess.run([*command, str(source), "-o", str(out), *libs], check=True, capture_output=True)
    return out


def build_main(build: Callable[[], Path], fallback: str) -> int:
    """``python -m …build_…``: build, or say why not and that ``fallback`` runs (exit 1)."""
    try:
        print(f"built {build()}")
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        print(f"not built (the {fallback} runs): {exc} {detail.decode()[:400]}", file=sys.stderr)
        return 1
    return 0
