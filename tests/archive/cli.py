"""Run the archive domain's CLI commands the way `airlock` does."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from airlock import _cli
from airlock.errors import AirlockError, ExitCode

_MINE = ("archive", "search", "report", "export")


def run_cli(argv: list[str]) -> int:
    """`airlock._cli.main(argv)`, or the same dispatch while a command is not yet registered."""
    if argv[0] in _cli._COMMANDS:
        return _cli.main(argv)
    parser = argparse.ArgumentParser(prog="airlock")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in _MINE:
        if importlib.util.find_spec(f"airlock._commands.{name}") is not None:
            importlib.import_module(f"airlock._commands.{name}").register(sub)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(ExitCode.USAGE) if exc.code == 2 else int(exc.code or 0)
    try:
        return int(args.func(args))
    except AirlockError as exc:
        print(f"airlock: error: {exc.explain()}", file=sys.stderr)
        return int(exc.exit_code)
