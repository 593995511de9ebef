"""`airlock export PATH --format ocsf|asciicast`: OCSF JSON lines for a SIEM, or the terminal
output with its timing as an asciicast v2 recording (``asciinema play``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from airlock._commands._common import add_flag
from airlock._commands.report import session_path
from airlock.archive.asciicast import to_asciicast
from airlock.archive.export_ocsf import dumps, to_ocsf
from airlock.archive.layout import read_manifest
from airlock.audit import iter_events
from airlock.errors import UsageError

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add `airlock export`."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "export",
        help="export session events for a SIEM (OCSF JSON lines), or the terminal (asciicast)",
        description="Write one OCSF 1.3 record per event as JSON lines, or the terminal output "
        "with its timing as asciicast v2 (docs/report.md).",
    )
    parser.add_argument("paths", nargs="+", help="session directories or s3://…/<session>/")
    add_flag(
        parser,
        "--format",
        env="AIRLOCK_EXPORT_FORMAT",
        choices=["ocsf", "asciicast"],
        default="ocsf",
        help="output format",
    )
    add_flag(
        parser,
        "-o",
        "--output",
        env="AIRLOCK_EXPORT_OUTPUT",
        type=Path,
        help="file (default stdout)",
    )
    add_flag(parser, "--endpoint-url", env="AIRLOCK_S3_ENDPOINT_URL", help="S3 endpoint override")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        out = args.output.open("w", encoding="utf-8") if args.output else sys.stdout
    except OSError as exc:
        raise UsageError(f"cannot write {args.output}: {exc.strerror}") from exc
    try:
        for path in args.paths:
            with session_path(path, args.endpoint_url) as session:
                session_id = str(read_manifest(session)["session_id"])
                if args.format == "asciicast":
                    for line in to_asciicast(iter_events(session), session_id):
                        out.write(line + "\n")
                    continue
                for record in to_ocsf(iter_events(session), session_id):
                    out.write(dumps(record) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return 0
