"""A Markdown summary of a session for ``$GITHUB_STEP_SUMMARY`` (and GitLab job artifacts).

GitHub renders the summary as Markdown with some HTML, so every value from the log is escaped:
in text, Markdown punctuation and HTML; in code spans (where backslashes are literal), by a fence
longer than any backtick run inside. The notable events are capped at ``MAX_SUMMARY_ROWS`` rows
(a 3,000-process session stays readable), with a pointer to the full HTML report; the whole
summary stays below 1 MiB, GitHub's limit per step.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from airlock.archive.agent_summary import agent_totals
from airlock.archive.layout import read_manifest
from airlock.archive.report import verification_state
from airlock.audit import iter_events
from airlock.audit.describe import Describer, EventView, truncate
from airlock.audit.visible import visible

__all__ = ["MAX_SUMMARY_BYTES", "MAX_SUMMARY_ROWS", "code_span", "escape_md", "render_summary"]

MAX_SUMMARY_BYTES = 1024 * 1024 - 4096  # GitHub refuses a step summary over 1 MiB
MAX_SUMMARY_ROWS = 100  # notable events shown; the HTML report has them all
_NOTABLE = (
    "process.exec",
    "db.query",
    "http.request",
    "mcp.request",
    "guardrail.decision",
    "approval.",
)
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~>])")
_ICON = {"ok": "✅", "incomplete": "⚠️", "failed": "❌"}


def escape_md(text: str) -> str:
    """Text safe in a Markdown table cell: HTML escaped, Markdown punctuation escaped, one line,
    invisible characters (bidi, zero-width) as visible escapes."""
    text = (
        visible(" ".join(text.split()))
        .replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
    )
    text = " ".join(text.split())
    return _MD_SPECIAL.sub(r"\\\1", text)


def code_span(text: str) -> str:
    """``text`` as an inline code span that renders exactly ``text`` (on one line).

    Backslash escapes do not work inside code spans, so none are added: the fence is one
    backtick longer than the longest run inside, padded with a space when the text starts or
    ends with a backtick (CommonMark 6.1).
    """
    text = visible(" ".join(text.split())) or " "
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text[0] == "`" or text[-1] == "`" or (text[0] == " " == text[-1]) else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _header(
    manifest: Mapping[str, Any], identity: Mapping[str, Any], verdict: dict[str, str]
) -> list[str]:
    lines = [
        f"### Airlock session {code_span(str(manifest.get('session_id')))}",
        "",
        f"{_ICON.get(verdict['state'], '')} {escape_md(verdict['text'])}",
        "",
        "| | |",
        "|---|---|",
    ]
    facts = {**{k: v for k, v in identity.items() if not isinstance(v, dict)}}
    facts.update({k: manifest.get(k) for k in ("status", "exit_code", "event_count")})
    lines += [f"| {escape_md(str(k))} | {escape_md(str(v))} |" for k, v in facts.items()]
    return lines


class _Network:
    """The job summary's network section: the egress allowlist and every denial."""

    def __init__(self) -> None:
        self.allowlist: list[str] | None = None
        self.denials: list[str] = []
        self.allowed = 0

    def see(self, etype: str, event: dict[str, Any], view: EventView) -> None:
        data = event.get("data") if isinstance(event.get("data"), dict) else {}
        assert isinstance(data, dict)
        if etype == "gateway.started" and data.get("kind") == "egress":
            self.allowlist = [str(line) for line in data.get("allowlist") or ()]
        elif etype == "net.connect" and data.get("outcome") == "denied":
            self.denials.append(f"| {event.get('seq')} | {escape_md(truncate(view.plain, 240))} |")
        elif etype == "net.connect":
            self.allowed += 1

    def lines(self) -> list[str]:
        if self.allowlist is None and not self.denials and not self.allowed:
            return []
        rules = self.allowlist or []
        out = ["", "#### Network", "", f"**Allowlist** ({len(rules)} rules, default deny):", ""]
        out += [f"- {escape_md(rule)}" for rule in rules[:100]] or ["- (nothing allowed)"]
        out += ["", f"**Connections:** {self.allowed} allowed, {len(self.denials)} denied", ""]
        if self.denials:
            out += ["| seq | denied |", "|---|---|", *self.denials[:200]]
        return out


def _notable_rows(
    events: Iterable[dict[str, Any]], counts: Counter[str], network: _Network | None = None
) -> tuple[dict[str, Any], list[str]]:
    identity: dict[str, Any] = {}
    rows = []
    describer = Describer()
    for event in events:
        etype = str(event.get("type"))
        counts[etype] += 1
        view = describer.view(event)
        if etype == "session.start" and isinstance(event.get("data"), dict):
            identity = event["data"].get("identity") or {}
        if network is not None:
            network.see(etype, event, view)
        if etype.startswith(_NOTABLE):
            what = escape_md(truncate(view.plain, 160))
            if view.denied:
                what = f"**{escape_md(view.outcome or 'denied').upper()}** {what}"
            rows.append(f"| {event.get('seq')} | {escape_md(etype)} | {what} |")
    return identity, rows


def render_summary(
    session_dir: Path,
    trusted: Mapping[str, Ed25519PublicKey],
    max_bytes: int = MAX_SUMMARY_BYTES,
    *,
    max_rows: int = MAX_SUMMARY_ROWS,
    report_link: str | None = None,
) -> str:
    """The Markdown summary of a session: identity, verification, counts, notable events.

    ``report_link`` is where the full HTML report is (the run's artifacts page): named when
    rows are left out.
    """
    manifest = read_manifest(session_dir, required=False)
    counts: Counter[str] = Counter()
    network = _Network()
    identity, rows = _notable_rows(iter_events(session_dir), counts, network)
    lines = _header(manifest, identity, verification_state(session_dir, trusted))
    lines += [
        "",
        "**Events:** " + ", ".join(f"{escape_md(t)} {n}" for t, n in sorted(counts.items())),
    ]
    lines += _agent_lines(session_dir)
    lines += network.lines()
    lines += ["", "| seq | type | what |", "|---|---|---|"]
    head = "\n".join(lines) + "\n"
    return _fit(head, rows, max_bytes, max_rows, report_link)


def _agent_lines(session_dir: Path) -> list[str]:
    """Models, tokens, tool calls, denials, approvals (when the session has any)."""
    totals = agent_totals(iter_events(session_dir))
    return [] if totals.empty() else ["", *(f"- {escape_md(line)}" for line in totals.lines())]


def _fit(head: str, rows: list[str], max_bytes: int, max_rows: int, link: str | None) -> str:
    out = [head]
    size = len(head.encode())
    for index, row in enumerate(rows):
        row_size = len(row.encode()) + 1
        if index >= max_rows or size + row_size + 400 > max_bytes:
            where = (
                f"the full report is in the [airlock report artifact]({_url(link)})"
                if link
                else "see the HTML report (`airlock report`)"
            )
            out.append(f"\n_{len(rows) - index} more events not shown; {where}._\n")
            break
        out.append(row + "\n")
        size += row_size
    return "".join(out)


def _url(link: str) -> str:
    """A link destination that cannot end the link or start markup (CommonMark 6.3)."""
    return "<" + re.sub(r"[<>\s\\]", lambda m: f"%{ord(m.group()):02X}", link) + ">"
