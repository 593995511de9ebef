"""`airlock report PATH -o F.html`: a self-contained HTML page; `--markdown` for job summaries."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from airlock._commands._common import add_flag
from airlock.archive.fetch import fetch_session
from airlock.audit import default_key_path, load_public_keys
from airlock.errors import UsageError

__all__ = ["register", "session_path", "trusted_keys"]


def register(sub: Any) -> None:
    """Add `airlock report`."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "report",
        help="render a session as one self-contained HTML page (and/or a Markdown summary)",
        description=(
            "Write a self-contained HTML page (no network access: inline CSS/JS under a strict "
            "Content-Security-Policy) with identity, verification status, timeline, filters and "
            "terminal replay; --markdown writes the job summary (GITHUB_STEP_SUMMARY, < 1 MiB)."
        ),
    )
    parser.add_argument("path", help="a session directory, or s3://…/<session>/")
    add_flag(
        parser, "-o", "--output", env="AIRLOCK_REPORT_OUTPUT", type=Path, help="HTML file to write"
    )
    add_flag(
        parser,
        "--markdown",
        env="AIRLOCK_REPORT_MARKDOWN",
        help="write the Markdown summary to FILE ('-': stdout, 'step': $GITHUB_STEP_SUMMARY)",
    )
    add_flag(
        parser,
        "--key-file",
        env="AIRLOCK_TRUST_KEYS",
        action="append",
        default=[],
        help="trusted public key PEM for the verification status (repeatable)",
    )
    add_flag(parser, "--endpoint-url", env="AIRLOCK_S3_ENDPOINT_URL", help="S3 endpoint override")
    parser.set_defaults(func=_run)


def trusted_keys(key_files: list[str]) -> Mapping[str, Ed25519PublicKey]:
    """The given keys plus the local default signing key when it exists."""
    paths = [Path(p) for p in key_files]
    default = default_key_path()
    if default.exists():
        paths.append(default)
    return load_public_keys(paths)


@contextmanager
def session_path(path: str, endpoint_url: str | None) -> Iterator[Path]:
    """A local session directory for ``path``; archived sessions are fetched to a temp dir."""
    if not path.startswith("s3://"):
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="airlock-fetch-") as tmp:
        yield fetch_session(path, Path(tmp), endpoint_url)


def _run(args: argparse.Namespace) -> int:
    from airlock.archive.summary import render_summary

    if not args.output and not args.markdown:
        raise UsageError("nothing to write", hint="give -o FILE.html and/or --markdown FILE")
    trusted = trusted_keys(args.key_file)
    with session_path(args.path, args.endpoint_url) as session:
        if args.output:
            _write(args.output, _render_with_progress(session, trusted))
        if args.markdown:
            _write_markdown(args.markdown, render_summary(session, trusted))
    return 0


_BIG = 20_000  # events: below this a report takes about a second, no bar needed


def _render_with_progress(session: Path, trusted: Mapping[str, Ed25519PublicKey]) -> str:
    """The report; on a terminal, a progress bar over the events of a big session (in a log,
    nothing: a line per event would drown it)."""
    from airlock._commands._progress import ItemProgress
    from airlock.archive.layout import read_manifest
    from airlock.archive.report import render_report

    total = read_manifest(session, required=False).get("event_count")
    if not sys.stderr.isatty() or not isinstance(total, int) or total < _BIG:
        return render_report(session, trusted)
    seen = 0

    def tick() -> None:  # the bar moves every 1,000 events: drawing it costs more than an event
        nonlocal seen
        seen += 1
        if seen % 1000 == 0:
            progress.advance("", count=1000)

    with ItemProgress("events read", total) as progress:
        return render_report(session, trusted, on_event=tick)


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from exc


def _write_markdown(target: str, text: str) -> None:
    if target == "-":
        print(text, end="")
        return
    if target == "step":
        summary = os.environ.get("GITHUB_STEP_SUMMARY")
        if not summary:
            raise UsageError("--markdown step needs $GITHUB_STEP_SUMMARY (set by GitHub Actions)")
        with Path(summary).open("a", encoding="utf-8") as fh:
            fh.write(text)
        return
    _write(Path(target), text)
