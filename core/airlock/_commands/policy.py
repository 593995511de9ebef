"""`airlock policy check FILE…` and `airlock policy schema`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from airlock._commands._common import add_flag
from airlock.audit.visible import visible
from airlock.errors import ExitCode
from airlock.policy import PolicyError, PolicyProblem, load_policy, policy_json_schema

__all__ = ["register"]

_FORMATS = ("text", "github")


def register(sub: Any) -> None:
    """Add ``airlock policy`` and its subcommands."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "policy",
        help="validate a session policy (airlock.yaml) or print its JSON Schema",
        description="Validate session policies and print the policy JSON Schema.",
    )
    actions = parser.add_subparsers(dest="policy_command", metavar="ACTION", required=True)

    check = actions.add_parser(
        "check",
        help="validate policy files; exit 80 and list every problem if any is invalid",
        description="Validate policy files. Prints 'ok: FILE' or every problem, one a line.",
    )
    check.add_argument("files", nargs="+", type=Path, metavar="FILE", help="policy file(s)")
    add_flag(
        check,
        "--format",
        env="AIRLOCK_POLICY_FORMAT",
        choices=_FORMATS,
        default="text",
        help="text, or github (workflow-command annotations on the file and line)",
    )
    check.set_defaults(func=_check)

    schema = actions.add_parser(
        "schema",
        help="print the JSON Schema of airlock.yaml",
        description="Print the JSON Schema of the policy file (docs/policy.schema.json).",
    )
    schema.set_defaults(func=_schema)


def _check(args: argparse.Namespace) -> int:
    failed = False
    for path in args.files:
        try:
            load_policy(path)
        except PolicyError as exc:
            failed = True
            for problem in exc.problems:
                print(_render(problem, args.format))
        else:
            print(f"ok: {path}")
    return int(ExitCode.USAGE) if failed else int(ExitCode.OK)


def _render(problem: PolicyProblem, fmt: str) -> str:
    if fmt == "github":
        line = f",line={problem.line}" if problem.line is not None else ""
        if problem.column is not None:
            line += f",col={problem.column}"
        text = f"{problem.path}: {problem.message}" if problem.path else problem.message
        return f"::error file={_gh_escape(problem.source, prop=True)}{line}::{_gh_escape(text)}"
    return str(problem)


def _gh_escape(text: str, *, prop: bool = False) -> str:
    """Escape for a GitHub workflow command, so a message cannot start a command of its own."""
    out = visible(text).replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if prop:
        out = out.replace(":", "%3A").replace(",", "%2C")
    return out


def _schema(args: argparse.Namespace) -> int:
    sys.stdout.write(json.dumps(policy_json_schema(), indent=2, sort_keys=True) + "\n")
    return int(ExitCode.OK)
