"""`airlock report`: one self-contained HTML page for a session.

The page carries its own CSS and JS and a Content-Security-Policy that allows nothing else
(``default-src 'none'``, scripts and styles only by hash), so opening it makes no network request.
Every value from the log reaches the page as JSON data and is put in the DOM with
``textContent``: nothing from the log is ever parsed as HTML. Output is shown as already masked
in the log, with terminal escape sequences removed.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from airlock import __version__
from airlock.archive.asciicast import frames
from airlock.archive.conversation import conversation
from airlock.archive.layout import read_manifest
from airlock.audit import iter_events, verify_session
from airlock.audit.describe import Describer, output_text, strip_ansi, truncate
from airlock.audit.reader import event_time, in_time_order
from airlock.audit.visible import visible_json
from airlock.errors import VerificationFailed

__all__ = ["ReportLimits", "render_report", "verification_state"]

_PLACEHOLDER = re.compile(r"\{\{(CSP|TITLE|FOOTER|STYLE|SCRIPT|DATA)\}\}")


@dataclass(frozen=True)
class ReportLimits:
    """Caps that keep a page for a huge session openable."""

    max_events: int = 50_000
    data_chars: int = 4_000
    terminal_chars: int = 4_000_000


def verification_state(
    session_dir: Path, trusted: Mapping[str, Ed25519PublicKey]
) -> dict[str, str]:
    """``{"state": ok|incomplete|failed, "text": ...}`` from ``verify_session``."""
    try:
        report = verify_session(session_dir, trusted)
    except VerificationFailed as exc:
        where = f" at line {exc.line}" if exc.line else ""
        return {
            "state": "failed",
            "text": f"verification FAILED ({exc.kind}{where}): {exc.message}",
        }
    head = f"{report.event_count} events, head {report.head[:12]}…, signed by {report.key_id}"
    if report.status != "complete":
        return {"state": "incomplete", "text": f"verified but INCOMPLETE: {head}"}
    return {"state": "ok", "text": f"verified: {head}"}


def _offset(event: dict[str, Any], start: datetime | None) -> str:
    """Seconds since the session began, at the time the event happened (strace's own time for
    a process event: see audit.reader.event_time)."""
    moment = event_time(event)
    if moment is None or start is None:
        return str(event.get("ts", ""))
    return f"{(moment - start).total_seconds():9.3f}s"


def _collect(
    events: Iterable[dict[str, Any]],
    limits: ReportLimits,
    on_event: Callable[[], None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, int], str, dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    types: dict[str, int] = {}
    terminal: list[str] = []
    size = 0
    start: datetime | None = None
    identity: dict[str, Any] = {}
    describer = Describer()
    for _, event, view in in_time_order(_counted(events, on_event), describer.view):
        etype = str(event.get("type"))
        types[etype] = types.get(etype, 0) + 1
        data = event.get("data") if isinstance(event.get("data"), dict) else {}
        assert isinstance(data, dict)
        if etype == "session.start":
            identity = data.get("identity") or {}
            start = event_time(event)
        if etype == "output" and size < limits.terminal_chars:
            text = strip_ansi(output_text(data))
            terminal.append(text)
            size += len(text)
        if len(rows) < limits.max_events:
            pretty = json.dumps(data, ensure_ascii=False, indent=2, sort_keys=True)
            rows.append(
                {
                    "seq": event.get("seq"),
                    "offset": _offset(event, start),
                    "type": etype,
                    "summary": truncate(view.plain, 300),
                    "denied": view.denied,
                    "data": truncate(pretty, limits.data_chars),
                }
            )
    return rows, types, "".join(terminal)[: limits.terminal_chars], identity


def _counted(
    events: Iterable[dict[str, Any]], on_event: Callable[[], None] | None
) -> Iterator[dict[str, Any]]:
    for event in events:
        if on_event is not None:
            on_event()
        yield event


def _frames(session_dir: Path, limits: ReportLimits) -> list[tuple[float, str]]:
    """Timed terminal output (ANSI kept: the page renders colours as classes, text as text)."""
    out, size = [], 0
    for seconds, text in frames(iter_events(session_dir)):
        if size >= limits.terminal_chars:
            break
        out.append((round(seconds, 3), text))
        size += len(text)
    return out


def _script_json(value: Any) -> str:
    """JSON safe inside <script>: no "<", ">", "&" or line separators can end or confuse it."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escape)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def _resource(name: str) -> str:
    return resources.files("airlock.archive").joinpath(name).read_text(encoding="utf-8")


def render_report(
    session_dir: Path,
    trusted: Mapping[str, Ed25519PublicKey],
    limits: ReportLimits | None = None,
    on_event: Callable[[], None] | None = None,
) -> str:
    """The HTML page for the session in ``session_dir`` (verified against ``trusted``).

    ``on_event`` is called once per event read (progress for big sessions)."""
    limits = limits or ReportLimits()
    manifest = read_manifest(session_dir, required=False)
    rows, types, terminal, identity = _collect(iter_events(session_dir), limits, on_event)
    facts = [("session", str(manifest.get("session_id")))]
    facts += [(k, str(v)) for k, v in identity.items() if not isinstance(v, dict)]
    facts += [
        (k, str(manifest.get(k)))
        for k in ("status", "started_at", "ended_at", "exit_code", "reason", "event_count")
        if manifest.get(k) is not None
    ]
    payload = {
        "identity": facts,
        "verification": verification_state(session_dir, trusted),
        "types": sorted(types.items()),
        "events": rows,
        "terminal": terminal,
        "frames": _frames(session_dir, limits),
        "conversation": conversation(iter_events(session_dir)),
    }
    style, script = _resource("report.css"), _resource("report.js")
    csp = (
        f"default-src 'none'; style-src {_csp_hash(style)}; script-src {_csp_hash(script)}; "
        "img-src 'none'; connect-src 'none'; base-uri 'none'; form-action 'none'"
    )
    title = f"Airlock session {manifest.get('session_id')}"
    shown = f" (first {limits.max_events} shown)" if len(rows) < sum(types.values()) else ""
    footer = f"airlock {__version__} report; {sum(types.values())} events{shown}."
    values = {
        "CSP": html.escape(csp),
        "TITLE": html.escape(title),
        "FOOTER": html.escape(footer),
        "STYLE": style,
        "SCRIPT": script,
        # bidi and zero-width characters shown as escapes; control characters are the
        # page's to handle (the replay reads ANSI escapes, text goes in as text)
        "DATA": _script_json(visible_json(payload, controls=False)),
    }
    # one pass, so text from the log can never be taken for a placeholder
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], _resource("report.html"))
