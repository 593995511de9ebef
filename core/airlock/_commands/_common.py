"""Helpers shared by the CLI commands: every flag gets an ``AIRLOCK_*`` environment default."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

__all__ = ["add_flag", "add_session_flags", "default_sessions_dir"]


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


def add_session_flags(parser: argparse.ArgumentParser) -> None:
    """--policy, --sessions and --key: what every command that records a session takes."""
    add_flag(
        parser, "--policy", env="AIRLOCK_POLICY", type=Path, help="session policy (airlock.yaml)"
    )
    add_flag(
        parser,
        "--sessions",
        env="AIRLOCK_SESSIONS",
        type=Path,
        default=default_sessions_dir(),
        help="directory that holds session logs (default: .airlock/sessions)",
    )
    add_flag(parser, "--key", env="AIRLOCK_KEY", type=Path, help="Ed25519 signing key (PEM)")
