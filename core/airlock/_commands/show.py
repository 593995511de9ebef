"""`airlock show PATH`: a session's timeline, or the sessions in a directory.

Recorded text is the agent's output: it is shown with control characters escaped, so a log
cannot move the cursor, recolour or rewrite the reader's terminal.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from airlock._commands._common import add_flag
from airlock.audit import iter_events
from airlock.audit.describe import Describer
from airlock.audit.reader import EVENTS_FILE, in_time_order, load_manifest
from airlock.audit.visible import visible
from airlock.errors import AirlockError, ExitCode, UsageError

__all__ = ["register", "summarize"]

_EVENTS = EVENTS_FILE
_WIDTH = 120
_TYPE_STYLES = {
    "session": "bold cyan",
    "process": "green",
    "output": "white",
    "input": "yellow",
    "guardrail": "bold red",
    "approval": "bold magenta",
    "credential": "magenta",
    "airlock": "bold red",
}


def register(sub: Any) -> None:
    """Add ``airlock show``."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "show",
        help="show a session's timeline, or list the sessions in a directory",
        description=(
            "Show a session as a timeline (offset, type, one-line summary per event), or, "
            "when PATH is a sessions directory, list its sessions newest first. Does not "
            "verify: use `airlock verify` for that."
        ),
    )
    parser.add_argument("path", metavar="PATH", help="a session directory, or a sessions dir")
    add_flag(
        parser,
        "--json",
        env="AIRLOCK_JSON",
        action="store_true",
        help="print events (or sessions) as JSON lines",
    )
    add_flag(
        parser,
        "--type",
        env="AIRLOCK_SHOW_TYPES",
        action="append",
        default=[],
        metavar="T",
        dest="types",
        help="only events of type T, or of family T (e.g. 'process'); repeatable",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if (path / _EVENTS).is_file() or (path.name == _EVENTS and path.is_file()):
        _show_session(path, args)
    elif path.is_dir():
        _list_sessions(path, as_json=args.json)
    else:
        raise UsageError(
            f"{path} is neither a session nor a sessions directory",
            hint="pass <sessions>/<session-id>, or the sessions directory to list it",
        )
    return int(ExitCode.OK)


def _wanted(types: list[str]) -> Callable[[str], bool]:
    if not types:
        return lambda _t: True
    families = tuple(f"{t.rstrip('.*')}." for t in types)
    exact = set(types)
    return lambda t: t in exact or t.startswith(families)


def _show_session(path: Path, args: argparse.Namespace) -> None:
    keep = _wanted(list(args.types))
    events = (e for e in iter_events(path) if keep(str(e.get("type", ""))))
    if args.json:
        for event in events:
            sys.stdout.write(json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n")
        return
    session_dir = path.parent if path.name == _EVENTS else path
    console = Console(highlight=False, soft_wrap=True)
    console.print(Text(_header(session_dir), style="bold"))
    _print_timeline(console, iter_events(path), keep)


def _header(session_dir: Path) -> str:
    manifest = load_manifest(session_dir)
    if manifest is None:
        state = "UNSEALED (no manifest; `airlock seal` it if the recorder died)"
    elif manifest.get("status") == "complete":
        state = f"sealed complete, exit code {manifest.get('exit_code')}"
    else:
        state = f"sealed INCOMPLETE: {_clean(str(manifest.get('reason')))}"
    return f"session {session_dir.name}: {state} (not verified here: run `airlock verify`)"


def _print_timeline(
    console: Console, events: Iterator[dict[str, Any]], keep: Callable[[str], bool]
) -> None:
    start: datetime | None = None
    describer = Describer()
    for when, event, view in in_time_order(events, describer.view):
        start = start or when
        if not keep(str(event.get("type", ""))):
            continue
        offset = (when - start).total_seconds() if when and start else 0.0
        type_ = _clean(str(event.get("type", "?")))
        line = Text(f"{offset:+10.3f}s ", style="dim")
        line.append(f"{type_:<20} ", style=_TYPE_STYLES.get(type_.split(".")[0], "blue"))
        if view.denied:
            line.append(f"{(view.outcome or 'denied').upper()} ", style="bold red")
        line.append(_clean(view.summary))
        console.print(line)


def _clean(text: str, limit: int = _WIDTH) -> str:
    """One line, control characters escaped, trimmed to ``limit``."""
    text = text[: limit * 2]  # a 64 KiB output chunk is cut before it is escaped
    text = visible(text).replace("\n", "\\n").replace("\t", "\\t")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _argv(value: Any) -> str:
    if isinstance(value, list):
        return shlex.join(str(a) for a in value)
    return str(value)


def summarize(type_: str, data: dict[str, Any], describer: Describer | None = None) -> str:
    """A one-line, terminal-safe summary of one event's data (the shared describer's)."""
    view = (describer or Describer()).view({"type": type_, "data": data})
    return _clean(view.summary)


def _session_row(session_dir: Path) -> dict[str, Any]:
    manifest = load_manifest(session_dir)
    first = next(iter_events(session_dir), None)
    data = first.get("data", {}) if isinstance(first, dict) else {}
    command = _argv(data.get("argv", "")) if isinstance(data, dict) else ""
    count: Any
    if manifest is None:
        status, count = "unsealed", _count_lines(session_dir / _EVENTS)
    else:
        status, count = str(manifest.get("status")), manifest.get("event_count")
    return {
        "session_id": session_dir.name,
        "started_at": first.get("ts") if isinstance(first, dict) else None,
        "status": status,
        "event_count": count,
        "command": command,
    }


def _broken_row(session_dir: Path) -> dict[str, Any]:
    return {
        "session_id": session_dir.name,
        "started_at": None,
        "status": "unreadable",
        "event_count": None,
        "command": "",
    }


def _count_lines(events: Path) -> int:
    count = 0
    with events.open("rb") as handle:
        while block := handle.read(1 << 20):
            count += block.count(b"\n")
    return count


def _list_sessions(sessions_dir: Path, *, as_json: bool) -> None:
    rows = []
    for child in sorted(sessions_dir.iterdir()):
        if (child / _EVENTS).is_file():
            try:
                rows.append(_session_row(child))
            except AirlockError:  # unreadable or malformed: `airlock verify` says more
                rows.append(_broken_row(child))
    rows.sort(key=lambda r: (str(r["started_at"] or ""), r["session_id"]), reverse=True)
    if as_json:
        for row in rows:
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
        return
    table = Table(title=Text(_clean(str(sessions_dir))), box=box.SIMPLE_HEAD)
    for name in ("session", "started", "status", "events"):
        table.add_column(name, no_wrap=True, min_width=len(name))
    table.add_column("command", overflow="ellipsis", no_wrap=True, min_width=7)
    for row in rows:
        # Text, not str: a recorded command must not be read as rich markup.
        table.add_row(
            Text(_clean(row["session_id"])),
            Text(_clean(str(row["started_at"] or "")[:19])),
            Text(_clean(row["status"])),
            Text(str(row["event_count"])),
            Text(_clean(row["command"], 60)),
        )
    Console(highlight=False, width=None if sys.stdout.isatty() else 160).print(table)
