"""The ``airlock`` command line. Errors are caught here, once, and turned into exit codes."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import os
import sys
import threading
from collections.abc import Sequence

from airlock import __version__
from airlock.errors import AirlockError, ExitCode, MissingExtra

__all__ = ["build_parser", "main"]

# Each module in airlock._commands registers one top-level command.
_COMMANDS = (
    "run",
    "verify",
    "show",
    "seal",
    "policy",
    "archive",
    "search",
    "report",
    "export",
    "credentials",
    "gate",
    "gateway",
    "mcp",
    "broker",
    "ci",
)


def _exit_table() -> str:
    rows = "\n".join(f"  {int(code):>3}  {code.meaning}" for code in ExitCode)
    return (
        "exit codes:\n"
        f"{rows}\n"
        "  `airlock run` returns the wrapped command's status; when Airlock itself fails\n"
        "  it returns one of 80-87 and prints a line starting with 'airlock: error' on stderr."
    )


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole CLI, or just the ``only`` command (so that a command imports only its own)."""
    parser = argparse.ArgumentParser(
        prog="airlock",
        description="Run AI agents in CI/CD behind an airlock: masked, recorded, sealed.",
        epilog=_exit_table(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"airlock {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMANDS if only is None else (only,):
        module = importlib.import_module(f"airlock._commands.{name}")
        module.register(sub)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The command named in ``argv`` (the first word not starting with '-'), if it is one."""
    first = next((a for a in argv if not a.startswith("-")), None)
    return first if first in _COMMANDS else None


def _fail(exc: AirlockError) -> int:
    print(f"airlock: error: {exc.explain()}", file=sys.stderr)
    return int(exc.exit_code)


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    command = _command_of(args_list)
    try:
        parser = build_parser(command)
        args = parser.parse_args(args_list)
    except SystemExit as exc:  # argparse: --help exits 0, bad usage exits 2 → our usage code
        code = exc.code if isinstance(exc.code, int) else 0
        return int(ExitCode.USAGE) if code == 2 else code
    except ModuleNotFoundError as exc:  # an optional dependency, imported by the command itself
        return _missing(exc, command)
    try:
        result: int = args.func(args)
    except ModuleNotFoundError as exc:  # an optional dependency the command needed after all
        return _missing(exc, command)
    except AirlockError as exc:
        return _fail(exc)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug; the message of a foreign exception may hold data: not shown
        return _internal(exc)
    if argv is None and command == "run":
        _exit_now(result)
    return result


def _exit_now(code: int) -> None:
    """End the installed ``airlock run`` at once: its log is sealed, fsynced and closed, and the
    interpreter's teardown of every module it imported (pydantic's schemas, the masker) would
    cost 50-100 ms of CPU after the command has ended. Exit handlers still run; with another
    thread still alive, or under a profiler or debugger, this returns and Python ends the
    usual way."""
    if threading.active_count() != 1 or sys.getprofile() or sys.gettrace():
        return
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing to show
            stream.flush()
    os._exit(code)


def _missing(exc: ModuleNotFoundError, command: str | None) -> int:
    missing = MissingExtra.from_import(exc, command=command)
    return _internal(exc) if missing is None else _fail(missing)


def _internal(exc: Exception) -> int:
    if os.environ.get("AIRLOCK_DEBUG"):
        raise exc
    print(
        f"airlock: error: internal error ({type(exc).__name__}); "
        "rerun with AIRLOCK_DEBUG=1 for a traceback and report it",
        file=sys.stderr,
    )
    return int(ExitCode.INTERNAL)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
