"""`airlock seal PATH`: seal a session whose recorder died, as incomplete."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from airlock._commands._common import add_flag
from airlock.audit import find_unsealed, load_signing_key, seal_session
from airlock.audit._format import EVENTS_FILE, MANIFEST_FILE
from airlock.audit.keys import SigningKey
from airlock.errors import ExitCode, UsageError

__all__ = ["register"]

_DEFAULT_REASON = "session did not end cleanly"


def register(sub: Any) -> None:
    """Add ``airlock seal``."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "seal",
        help="seal a crashed session (no manifest) as incomplete",
        description=(
            f"Seal a session that has an {EVENTS_FILE} but no {MANIFEST_FILE} (the recorder "
            "was killed) as 'incomplete', signed with your key. Only complete lines are covered; "
            f"{EVENTS_FILE} is never rewritten. A session whose chain is broken is not sealed."
        ),
    )
    parser.add_argument("path", metavar="PATH", help="a session directory (<sessions>/<id>)")
    add_flag(
        parser,
        "--key",
        env="AIRLOCK_KEY",
        type=Path,
        metavar="PEM",
        help="signing key (default: ~/.config/airlock/signing-key.pem, created if missing)",
    )
    add_flag(
        parser,
        "--reason",
        env="AIRLOCK_SEAL_REASON",
        default=_DEFAULT_REASON,
        help="why the session is incomplete (recorded in the seal)",
    )
    add_flag(
        parser,
        "--all",
        env="AIRLOCK_SEAL_ALL",
        action="store_true",
        help="PATH is a sessions directory: seal every unsealed session in it",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    path = Path(args.path)
    targets = find_unsealed(path) if args.all else [path]
    if args.all and not targets:
        print(f"no unsealed sessions in {path}")
        return int(ExitCode.OK)
    if not path.exists():
        raise UsageError(f"{path} does not exist", hint="pass <sessions>/<session-id>")
    key = load_signing_key(args.key)
    for target in targets:
        _seal_one(target, key, args.reason)
    return int(ExitCode.OK)


def _seal_one(path: Path, key: SigningKey, reason: str) -> None:
    manifest = seal_session(path, key, reason=reason)
    print(
        f"sealed {manifest['session_id']} as incomplete: {manifest['event_count']} events, "
        f"head {manifest['head'][:12]}…, signed by {key.key_id}"
    )
