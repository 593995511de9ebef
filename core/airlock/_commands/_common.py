"""Helpers shared by the CLI commands: every flag gets an ``AIRLOCK_*`` environment default."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

__all__ = [
    "add_flag",
    "add_policy_flags",
    "add_session_flags",
    "default_sessions_dir",
    "session_policy",
]

if TYPE_CHECKING:
    from airlock.policy import Policy
    from airlock.policy.pin import PolicySource


def add_flag(parser: argparse.ArgumentParser, *flags: str, env: str, **kwargs: Any) -> None:
    """Add an option whose default comes from environment variable ``env`` when set.

    Boolean flags (``action="store_true"``) read ``1/true/yes/on`` as true.
    """
    raw = os.environ.get(env)
    if raw is not None and raw != "":
        if kwargs.get("action") == "store_true":
            kwargs["default"] = raw.strip().lower() in {"1", "true", "yes", "on"}
        elif kwargs.get("action") == "append":
            kwargs["default"] = [v for v in raw.split(",") if v]
        else:
            kwargs["default"] = kwargs.get("type", str)(raw)
    help_text = kwargs.get("help", "")
    kwargs["help"] = f"{help_text} [env: {env}]".strip()
    parser.add_argument(*flags, **kwargs)


def default_sessions_dir() -> Path:
    """Where sessions go when neither --sessions nor AIRLOCK_SESSIONS says: ./.airlock/sessions."""
    return Path(".airlock") / "sessions"


def add_policy_flags(parser: argparse.ArgumentParser, what: str = "session policy") -> None:
    """--policy (a file, or the YAML itself) and --policy-sha256 (its pin)."""
    add_flag(
        parser,
        "--policy",
        env="AIRLOCK_POLICY",
        # str, not Path: an inline policy (it holds a newline) is kept byte for byte
        help=f"{what}: a file (airlock.yaml), or the YAML itself when it holds a newline",
    )
    add_flag(
        parser,
        "--policy-sha256",
        env="AIRLOCK_POLICY_SHA256",
        metavar="HEX",
        help=(
            "SHA-256 of the policy file's exact bytes: any other file is refused; required "
            "under pull_request_target, issue_comment and workflow_run unless the policy is inline"
        ),
    )


def add_session_flags(parser: argparse.ArgumentParser) -> None:
    """--policy, --sessions and --key: what every command that records a session takes."""
    add_policy_flags(parser)
    add_flag(
        parser,
        "--sessions",
        env="AIRLOCK_SESSIONS",
        type=Path,
        default=default_sessions_dir(),
        help="directory that holds session logs (default: .airlock/sessions)",
    )
    add_flag(parser, "--key", env="AIRLOCK_KEY", type=Path, help="Ed25519 signing key (PEM)")


def session_policy(args: argparse.Namespace) -> tuple[Policy, PolicySource]:
    """The policy --policy (a path, or inline YAML when it holds a newline) and
    --policy-sha256 name, checked against this job's event (:mod:`airlock.policy.pin`)."""
    from airlock.policy.pin import load_session_policy, split_policy_value

    path, text = split_policy_value(args.policy)
    return load_session_policy(path, text=text, pin=args.policy_sha256, environ=os.environ)
