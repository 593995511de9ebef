"""``airlock ci …``: what the GitHub Actions and GitLab CI integrations call.

    airlock ci finalize --sessions DIR   seal what was left open, revoke leases, archive, verify,
                                         write the job summary and the step outputs / dotenv
    airlock ci outputs --sessions DIR    step outputs (or dotenv) of the newest session only
    airlock ci action PHASE              the JavaScript actions' entry points, reading INPUT_*:
                                         main, post (action.yml), session-main, session-post
                                         (actions/session)
    airlock ci session start|stop        bracket: record the steps between start and stop

`python -m airlock._commands.ci ARGS` is the same as `airlock ci ARGS` (the shims use it).

The YAML around these stays thin: inputs arrive as environment variables, the logic is here,
where it is tested. ``finalize`` does every duty it can even when an earlier one fails, then
returns the most serious failure (fail-mode ``closed``) or 0 with warnings (``open``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airlock._commands._common import add_flag, add_policy_flags
from airlock._commands.ci.action import action_command, action_inputs, parse_env_blocks
from airlock._commands.ci.bracket import session_command
from airlock._commands.ci.finalize import (
    FAIL_MODES,
    PLATFORMS,
    FinalizeResult,
    finalize,
    finalize_command,
    outputs_command,
)
from airlock._commands.ci.inputs import register_check_inputs
from airlock.errors import AirlockError, ExitCode

__all__ = [
    "FinalizeResult",
    "action_inputs",
    "finalize",
    "main",
    "parse_env_blocks",
    "register",
]


def register(sub: Any) -> None:
    """Add ``airlock ci`` and its subcommands."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "ci",
        help="CI integration: finalize a job's sessions, the GitHub Action's steps, brackets",
        description=(
            "Entry points for the GitHub Actions and GitLab CI integrations "
            "(docs/github-actions.md, docs/gitlab-ci.md)."
        ),
    )
    ci_sub = parser.add_subparsers(dest="ci_command", metavar="SUBCOMMAND", required=True)
    _register_finalize(ci_sub)
    _register_action(ci_sub)
    _register_session(ci_sub)
    _register_outputs(ci_sub)
    _register_sandbox_host(ci_sub)
    register_check_inputs(ci_sub)


def _register_sandbox_host(ci_sub: Any) -> None:
    parser: argparse.ArgumentParser = ci_sub.add_parser(
        "sandbox-host",
        help="prepare this runner for the agent's sandbox (bubblewrap, user namespaces)",
        description=(
            "Install bubblewrap when missing and lift Ubuntu 24.04's AppArmor user-namespace "
            "restriction (with sudo), saying so in the log; refuse `required` on a runner "
            "without Linux (exit 85). docs/sandbox.md."
        ),
    )
    add_flag(
        parser,
        "--sandbox",
        env="AIRLOCK_SANDBOX",
        default="required",
        help="required, best_effort or off",
    )
    parser.set_defaults(func=_sandbox_host_command)


def _sandbox_host_command(args: argparse.Namespace) -> int:
    from airlock._commands.ci.finalize import say
    from airlock.ci.sandbox_host import prepare_sandbox_host

    prepare_sandbox_host(args.sandbox, say=say)
    return 0


def _finalize_flags(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, "--sessions", env="AIRLOCK_SESSIONS", type=Path, help="the job's sessions dir")
    add_flag(
        parser,
        "--note",
        env="AIRLOCK_FINALIZE_NOTE",
        help="a warning put at the top of the summary (e.g. that the job was cancelled)",
    )
    add_flag(parser, "--archive-to", env="AIRLOCK_ARCHIVE_TO", help="s3://BUCKET/PREFIX or a dir")
    add_flag(parser, "--endpoint-url", env="AIRLOCK_S3_ENDPOINT_URL", help="S3 endpoint override")
    add_flag(
        parser,
        "--retention-days",
        env="AIRLOCK_ARCHIVE_RETENTION_DAYS",
        type=int,
        help="Object Lock retention in days (default: airlock archive's)",
    )
    add_flag(
        parser,
        "--revoke",
        env="AIRLOCK_REVOKE",
        action="store_true",
        help="revoke the job's credential leases (airlock credentials --revoke)",
    )
    add_flag(
        parser,
        "--platform",
        env="AIRLOCK_CI_PLATFORM",
        choices=PLATFORMS,
        default="auto",
        help="where to write the summary and outputs",
    )
    add_flag(
        parser,
        "--artifacts",
        env="AIRLOCK_ARTIFACTS",
        type=Path,
        help="GitLab: directory for the summary, HTML report and dotenv report",
    )
    add_flag(
        parser,
        "--fail-mode",
        env="AIRLOCK_FAIL_MODE",
        choices=FAIL_MODES,
        default="closed",
        help="closed: any failed duty fails the step; open: warn and exit 0 (said in the summary)",
    )
    add_flag(parser, "--key", env="AIRLOCK_KEY", type=Path, help="Ed25519 signing key (PEM)")


def _register_finalize(ci_sub: Any) -> None:
    parser: argparse.ArgumentParser = ci_sub.add_parser(
        "finalize",
        help="seal, revoke, archive, verify, summarize the job's sessions",
        description=(
            "Seal sessions whose recorder was killed (as incomplete), revoke credential "
            "leases, archive and verify every session, write the job summary and outputs. "
            "Each duty runs even when an earlier one failed."
        ),
    )
    _finalize_flags(parser)
    parser.set_defaults(func=finalize_command)


def _register_action(ci_sub: Any) -> None:
    parser: argparse.ArgumentParser = ci_sub.add_parser(
        "action",
        help="the root GitHub Action's main and post steps (reads INPUT_* variables)",
    )
    parser.add_argument("phase", choices=("main", "post", "session-main", "session-post"))
    parser.set_defaults(func=action_command)


def _register_session(ci_sub: Any) -> None:
    parser: argparse.ArgumentParser = ci_sub.add_parser(
        "session",
        help="start or stop a bracket session that records the steps in between",
    )
    parser.add_argument("phase", choices=("start", "stop"))
    add_flag(
        parser,
        "--state",
        env="AIRLOCK_BRACKET_STATE",
        type=Path,
        help="state directory (default: $RUNNER_TEMP/airlock/bracket)",
    )
    add_policy_flags(parser)
    add_flag(
        parser,
        "--record-scripts",
        env="AIRLOCK_BRACKET_RECORD_SCRIPTS",
        action="store_true",
        help="record the text of each step's script, not only its hash (see docs first)",
    )
    _finalize_flags(parser)
    parser.set_defaults(func=session_command)


def _register_outputs(ci_sub: Any) -> None:
    parser: argparse.ArgumentParser = ci_sub.add_parser(
        "outputs",
        help="write the newest session's id, path, status and exit code as step outputs",
        description="Step outputs (GitHub) or a dotenv report (GitLab) for the newest session.",
    )
    add_flag(parser, "--sessions", env="AIRLOCK_SESSIONS", type=Path, help="sessions dir")
    add_flag(parser, "--platform", env="AIRLOCK_CI_PLATFORM", choices=PLATFORMS, default="auto")
    add_flag(parser, "--artifacts", env="AIRLOCK_ARTIFACTS", type=Path, help="GitLab: dotenv dir")
    parser.set_defaults(func=outputs_command)


# ---------------------------------------------------------------------------------------------
# `python -m airlock._commands.ci …`: what the action shims call, registered in `airlock` or not


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``airlock ci ARGV`` with the CLI's error handling; returns the exit code."""
    parser = argparse.ArgumentParser(prog="airlock")
    register(parser.add_subparsers(dest="command", required=True))
    args_list = ["ci", *(sys.argv[1:] if argv is None else argv)]
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
        return int(ExitCode.USAGE) if code == 2 else code
    try:
        result: int = args.func(args)
    except AirlockError as exc:
        print(f"airlock: error: {exc.explain()}", file=sys.stderr)
        _annotate(exc.explain())
        return int(exc.exit_code)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: its message may hold data, so only its type is shown
        if os.environ.get("AIRLOCK_DEBUG"):
            raise
        text = f"internal error ({type(exc).__name__}); rerun with AIRLOCK_DEBUG=1 and report it"
        print(f"airlock: error: {text}", file=sys.stderr)
        _annotate(text)
        return int(ExitCode.INTERNAL)
    return result


def _annotate(message: str) -> None:
    """Under GitHub Actions, the error also as an annotation on the run's page."""
    if os.environ.get("GITHUB_ACTIONS") == "true":
        from airlock.ci.github import error_annotation

        print(error_annotation(message), flush=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
