"""`airlock search`: query sessions in a directory or an S3 prefix with DuckDB."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from airlock._commands._common import add_flag, default_sessions_dir
from airlock._commands._progress import ItemProgress
from airlock.archive.search import (
    SearchFilters,
    athena_ddl,
    build_query,
    open_events,
    parse_time,
    run_query,
    sync_s3_prefix,
)
from airlock.errors import UsageError

__all__ = ["register"]

_FORMATS = ("table", "json", "csv")


def register(sub: Any) -> None:
    """Add `airlock search`."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "search",
        help="query sessions (directory or s3:// prefix) by type, text, time, repo, or SQL",
        description=(
            "Search sessions with DuckDB over the view `events(session_id, seq, ts, type, "
            "platform, repository, actor, run_id, text, rule_id, outcome, data)` and "
            "`sessions(...)` (docs/search.md). Filters combine with AND."
        ),
    )
    parser.add_argument(
        "sources", nargs="*", help="session dirs, dirs of sessions, local archives, s3:// prefixes"
    )
    add_flag(
        parser,
        "--type",
        env="AIRLOCK_SEARCH_TYPE",
        action="append",
        default=[],
        help="event type (repeatable)",
    )
    add_flag(
        parser, "--text", env="AIRLOCK_SEARCH_TEXT", help="case-insensitive substring of `text`"
    )
    add_flag(parser, "--since", env="AIRLOCK_SEARCH_SINCE", help="ISO time or 24h / 7d ago")
    add_flag(parser, "--until", env="AIRLOCK_SEARCH_UNTIL", help="ISO time or 24h / 7d ago")
    add_flag(parser, "--platform", env="AIRLOCK_SEARCH_PLATFORM", help="github | gitlab | local")
    add_flag(parser, "--repo", env="AIRLOCK_SEARCH_REPO", help="owner/repo")
    add_flag(parser, "--actor", env="AIRLOCK_SEARCH_ACTOR", help="who triggered the run")
    add_flag(parser, "--rule", env="AIRLOCK_SEARCH_RULE", help="guardrail or masking rule id")
    add_flag(parser, "--outcome", env="AIRLOCK_SEARCH_OUTCOME", help="allow, deny, approved, ...")
    add_flag(parser, "--session", env="AIRLOCK_SEARCH_SESSION", help="one session id")
    add_flag(
        parser,
        "--limit",
        env="AIRLOCK_SEARCH_LIMIT",
        type=int,
        default=1000,
        help="max rows (0: all)",
    )
    add_flag(parser, "--sql", env="AIRLOCK_SEARCH_SQL", help="run this SQL over the views instead")
    add_flag(
        parser,
        "--format",
        env="AIRLOCK_SEARCH_FORMAT",
        choices=_FORMATS,
        default="table",
        help="output format",
    )
    add_flag(
        parser,
        "--athena-ddl",
        env="AIRLOCK_SEARCH_ATHENA_DDL",
        action="store_true",
        help="print the Athena table for the s3:// archive given, and exit",
    )
    add_flag(
        parser,
        "--table",
        env="AIRLOCK_SEARCH_TABLE",
        default="airlock_events",
        help="Athena table name",
    )
    add_flag(parser, "--endpoint-url", env="AIRLOCK_S3_ENDPOINT_URL", help="S3 endpoint override")
    add_flag(
        parser,
        "--cache",
        env="AIRLOCK_SEARCH_CACHE",
        type=Path,
        default=Path(".airlock") / "cache",
        help="where s3:// sessions are downloaded",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.athena_ddl:
        if len(args.sources) != 1:
            raise UsageError("--athena-ddl needs exactly one s3://BUCKET/PREFIX")
        print(athena_ddl(args.sources[0], args.table))
        return 0
    roots = [_local_root(s, args) for s in args.sources or [str(default_sessions_dir())]]
    con = open_events(roots)
    if args.sql:
        columns, rows = run_query(con, args.sql)
    else:
        sql, params = build_query(_filters(args))
        columns, rows = run_query(con, sql, params)
    try:
        _FORMATTERS[args.format](columns, rows)
        sys.stdout.flush()
    except BrokenPipeError:  # the reader stopped early (`| head -1`): not an error
        # stdout now goes nowhere, so the interpreter's last flush cannot fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _local_root(source: str, args: argparse.Namespace) -> Path:
    if source.startswith("s3://"):
        with ItemProgress("fetched") as progress:
            return sync_s3_prefix(
                source,
                args.cache,
                args.endpoint_url,
                on_total=progress.set_total,
                on_item=lambda key: progress.advance(key),
            )
    path = Path(source)
    if not path.exists():
        raise UsageError(f"{path} does not exist")
    return path


def _filters(args: argparse.Namespace) -> SearchFilters:
    return SearchFilters(
        types=tuple(args.type),
        text=args.text,
        since=parse_time(args.since) if args.since else None,
        until=parse_time(args.until) if args.until else None,
        platform=args.platform,
        repo=args.repo,
        actor=args.actor,
        rule=args.rule,
        outcome=args.outcome,
        session=args.session,
        limit=args.limit or None,
    )


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    return value


def _print_json(columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    for row in rows:
        record = {c: _plain(v) for c, v in zip(columns, row, strict=True)}
        if isinstance(record.get("data"), str):
            record["data"] = json.loads(record["data"])
        print(json.dumps(record, ensure_ascii=False, default=str))


def _print_csv(columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([_plain(v) for v in row] for row in rows)


_TABLE_COLUMNS = ("ts", "session_id", "type", "repository", "actor", "text", "rule_id", "outcome")


def _print_table(columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    from rich.console import Console
    from rich.table import Table

    # the filter query's table keeps the columns a reader scans; --format json/csv have them all
    keep = (
        [i for i, c in enumerate(columns) if c in _TABLE_COLUMNS] if "data" not in columns else []
    )
    keep = keep if len(keep) == len(_TABLE_COLUMNS) else list(range(len(columns)))
    table = Table(*(columns[i] for i in keep), show_lines=False, highlight=False)
    for row in rows:
        table.add_row(*(_cell(row[i]) for i in keep))
    console = Console(soft_wrap=False, width=None if sys.stdout.isatty() else 200)

    def stop_quietly() -> None:  # rich would exit 1; a closed pipe is handled in _run
        console.quiet = True
        raise BrokenPipeError

    console.on_broken_pipe = stop_quietly  # type: ignore[method-assign]
    console.print(table, markup=False)
    console.print(f"{len(rows)} row(s)", markup=False, style="dim")


def _cell(value: Any) -> Any:
    from rich.text import Text

    text = "" if value is None else str(_plain(value))
    return Text(" ".join(text.split())[:120])  # Text: never parsed as rich markup


_FORMATTERS = {"table": _print_table, "json": _print_json, "csv": _print_csv}
