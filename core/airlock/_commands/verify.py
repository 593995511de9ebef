"""`airlock verify PATH`: check a session's chain, seal and signature."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from airlock._commands._common import add_flag
from airlock.audit import (
    VerifyReport,
    default_key_path,
    load_public_keys,
    load_signing_key,
    verify_session,
)
from airlock.errors import ExitCode, UsageError, VerificationFailed

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add ``airlock verify``."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "verify",
        help="check a session's hash chain, seal and signature",
        description=(
            "Verify a sealed session: every line's seq and hash chain, the seal's counts, head "
            "and SHA-256, and its Ed25519 signature by a trusted key. On failure, name the "
            "first broken line and what happened to it (modified, deleted, inserted, "
            "reordered, truncated, manifest-edited, untrusted-key, unsealed, malformed). "
            "An incomplete session (it did not end cleanly) fails unless --allow-incomplete."
        ),
    )
    parser.add_argument(
        "path",
        metavar="PATH",
        help="a session directory (<sessions>/<id>), or an archived one (s3://bucket/.../<id>/)",
    )
    add_flag(
        parser,
        "--key-file",
        env="AIRLOCK_TRUST_KEYS",
        action="append",
        default=[],
        type=Path,
        metavar="PEM",
        help="trust this public (or private) key; repeatable; the local default key is "
        "always trusted when it exists (env: comma-separated)",
    )
    add_flag(
        parser,
        "--allow-incomplete",
        env="AIRLOCK_ALLOW_INCOMPLETE",
        action="store_true",
        help="exit 0 for a valid session sealed as incomplete",
    )
    add_flag(
        parser,
        "--broker",
        env="AIRLOCK_BROKER_URL",
        help="also check the log against every checkpoint this broker witnessed, and trust "
        "its published keys for the sealed checkpoints",
    )
    add_flag(
        parser,
        "--endpoint-url",
        env="AIRLOCK_S3_ENDPOINT_URL",
        help="S3 endpoint for s3:// paths (S3-compatible stores, tests)",
    )
    add_flag(parser, "--json", env="AIRLOCK_JSON", action="store_true", help="print JSON")
    parser.set_defaults(func=_run)


def trusted_keys(key_files: list[Path]) -> dict[str, Ed25519PublicKey]:
    """The local signing key's public half (when there is one) plus ``key_files``."""
    trusted: dict[str, Ed25519PublicKey] = {}
    local = default_key_path()
    if local.exists() or _env_key_set():
        key = load_signing_key()
        trusted[key.key_id] = key.public_key
    trusted.update(load_public_keys(Path(p) for p in key_files))
    if not trusted:
        raise UsageError(
            f"no trusted key: no local signing key at {local} and no --key-file",
            hint="pass the signer's public key with --key-file PEM (AIRLOCK_TRUST_KEYS)",
        )
    return trusted


def _env_key_set() -> bool:
    return bool(os.environ.get("AIRLOCK_KEY"))


def _run(args: argparse.Namespace) -> int:
    if str(args.path).startswith("s3://"):
        with tempfile.TemporaryDirectory(prefix="airlock-verify-") as tmp:
            from airlock.archive import fetch_session

            session = fetch_session(str(args.path), Path(tmp), args.endpoint_url)
            return _verify(args, session)
    return _verify(args, Path(args.path))


def _verify(args: argparse.Namespace, session: Path) -> int:
    trusted = trusted_keys(list(args.key_file))
    witnesses: dict[str, Ed25519PublicKey] = {}
    try:
        if args.broker:
            witnessed, witnesses = _broker_checkpoints(args.broker, _session_id(session))
        report = verify_session(session, trusted, witnesses=witnesses)
        if args.broker:
            from airlock.broker.witness import check_witnessed

            check_witnessed(
                session, report.session_id, witnessed, witnesses, last_seq=_last_seq(session)
            )
    except VerificationFailed as exc:
        if args.json:
            _print_json({"ok": False, "kind": exc.kind, "line": exc.line, "error": exc.message})
        raise
    accepted = report.status == "complete" or bool(args.allow_incomplete)
    if args.json:
        _print_json({**report.to_dict(), "ok": accepted})
    else:
        _print_text(report)
    if not accepted:
        raise VerificationFailed(
            f"session {report.session_id} is INCOMPLETE ({report.reason}): its "
            f"{report.event_count} events verify, but it did not end cleanly",
            kind="incomplete",
            hint="pass --allow-incomplete (AIRLOCK_ALLOW_INCOMPLETE=1) to accept it",
        )
    return int(ExitCode.OK)


def _manifest(session: Path) -> dict[str, Any]:
    from airlock.audit.reader import load_manifest

    return load_manifest(session) or {}


def _session_id(session: Path) -> str:
    """The id the session was sealed under (not its directory name, which anyone can change)."""
    return str(_manifest(session).get("session_id") or session.name)


def _last_seq(session: Path) -> int | None:
    last = _manifest(session).get("last_seq")
    return int(last) if isinstance(last, int) else None


def _broker_checkpoints(
    url: str, session_id: str
) -> tuple[list[dict[str, Any]], dict[str, Ed25519PublicKey]]:
    from airlock.broker.witness import parse_public_keys
    from airlock.brokerclient import BrokerClient

    client = BrokerClient(url)
    try:
        return client.checkpoints(session_id), parse_public_keys(client.public_keys())
    finally:
        client.close()


def _print_json(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")


def _print_text(report: VerifyReport) -> None:
    what = "verified" if report.status == "complete" else "INCOMPLETE (verified up to its seal)"
    print(
        f"{what} {report.session_id}: {report.event_count} events, "
        f"head {report.head[:12]}…, signed by {report.key_id}"
        + (f"; reason: {report.reason}" if report.status != "complete" else "")
    )
    for warning in report.warnings:
        print(f"airlock: warning: {warning}", file=sys.stderr)
