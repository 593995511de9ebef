"""`airlock run` (being built)."""

from __future__ import annotations

import argparse
from typing import Any

from airlock.errors import UsageError


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser("run", help="(not built yet)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    raise UsageError("`airlock run` is not built yet")
