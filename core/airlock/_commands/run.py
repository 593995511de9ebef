"""``airlock run [--policy F] [--sessions DIR] -- CMD…``: run CMD inside a recorded session."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from airlock._commands._common import add_flag, add_session_flags
from airlock.errors import UsageError

__all__ = ["register"]

COMMAND_NOT_FOUND = 127


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "run",
        help="run a command inside a recorded, masked, sealed session",
        description=(
            "Run COMMAND inside an Airlock session. Its output is masked before it is shown or "
            "recorded; every process it starts is recorded; the log is sealed and signed at the "
            "end. The exit status is COMMAND's own (127 if it does not exist); Airlock's own "
            "failures use 80-87 and print a line starting with 'airlock: error'."
        ),
    )
    add_session_flags(parser)
    add_flag(
        parser,
        "--pty",
        env="AIRLOCK_PTY",
        choices=("auto", "always", "never"),
        help="override the policy's capture.pty",
    )
    add_flag(parser, "--strace", env="AIRLOCK_STRACE", help="path of the strace binary")
    add_flag(
        parser,
        "--sandbox",
        env="AIRLOCK_SANDBOX",
        choices=("required", "best_effort", "off"),
        help="contain the command in a bubblewrap sandbox (overrides the policy's sandbox.mode)",
    )
    add_flag(
        parser,
        "--broker",
        env="AIRLOCK_BROKER_URL",
        help="broker that witnesses checkpoints of the log as the session runs",
    )
    add_flag(parser, "--audience", env="AIRLOCK_AUDIENCE", help="the broker's OIDC audience")
    add_flag(parser, "--state-dir", env="AIRLOCK_STATE_DIR", type=Path, help="job state directory")
    add_flag(parser, "--quiet", env="AIRLOCK_QUIET", action="store_true", help="no summary line")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    argv = list(args.command)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        raise UsageError(
            "no command given", hint="usage: airlock run [OPTIONS] -- COMMAND [ARGS...]"
        )
    from airlock.jobs.launch import RunOptions, run_command
    from airlock.jobs.request import CommandNotFound

    policy, policy_text = None, None
    if args.policy is not None:  # else pydantic loads in run_command, once git has started
        from airlock.policy.pin import split_policy_value

        policy, policy_text = split_policy_value(args.policy)
    options = RunOptions(
        sessions=args.sessions,
        policy=policy,
        policy_text=policy_text,
        policy_sha256=args.policy_sha256,
        key=args.key,
        pty=args.pty,
        strace=args.strace,
        sandbox=args.sandbox,
        broker=args.broker,
        audience=args.audience,
        state_dir=args.state_dir,
    )
    environ = dict(os.environ)  # the agent's environment is made from this copy
    # pydantic's plugins are entry points of whatever else is installed: not Airlock's, never
    # given the policy to look at, and their scan costs start-up (docs.pydantic.dev, plugins).
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    try:
        outcome = run_command(argv, options, environ)
    except CommandNotFound as exc:
        print(f"airlock: error: {exc.explain()}", file=sys.stderr)
        return COMMAND_NOT_FOUND
    if not args.quiet:
        manifest = outcome.manifest
        print(
            f"airlock: session {outcome.session_id} sealed ({manifest.get('event_count')} events, "
            f"exit {outcome.exit_status}): {outcome.path}",
            file=sys.stderr,
        )
    return outcome.exit_status
