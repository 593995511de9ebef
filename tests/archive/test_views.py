"""The views agree with the log: approvals in the summary, OCSF and search; Markdown that renders
exactly what was recorded (checked with a CommonMark parser, as GitHub renders GFM)."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt
from tests.archive.conftest import write_session

from airlock.archive.export_ocsf import to_ocsf
from airlock.archive.search import athena_ddl, open_events, run_query
from airlock.archive.summary import code_span, escape_md, render_summary
from airlock.audit import SigningKey, iter_events
from airlock.audit.describe import Describer
from airlock.audit.visible import visible

_MD = MarkdownIt("commonmark").enable("table")


class _Text(HTMLParser):
    """The text of each element kind, and every tag name seen."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.code: list[str] = []
        self.cells: list[str] = []
        self._open: list[str] = []

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        self.tags.append(tag)
        self._open.append(tag)
        if tag in ("code", "td"):
            (self.code if tag == "code" else self.cells).append("")

    def handle_endtag(self, tag: str) -> None:
        if self._open and self._open[-1] == tag:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        if "code" in self._open:
            self.code[-1] += data
        if "td" in self._open:
            self.cells[-1] += data


def _render(markdown: str) -> _Text:
    parsed = _Text()
    parsed.feed(_MD.render(markdown))
    return parsed


OP = {"kind": "sql", "text": "DROP TABLE users", "rule_id": "no-drop"}
APPROVALS: list[tuple[str, dict[str, Any]]] = [
    ("guardrail.decision", {"rule_id": "no-drop", "action": "require_approval"}),
    ("approval.requested", {"request_id": "r1", "backend": "file", "operation": OP}),
    ("approval.decided", {"request_id": "r1", "approved": False, "by": "4242", "reason": "no"}),
    ("approval.requested", {"request_id": "r2", "backend": "file", "operation": OP}),
    (
        "approval.expired",
        {"request_id": "r2", "approved": False, "by": "airlock", "reason": "expired"},
    ),
    ("approval.requested", {"request_id": "r3", "backend": "file", "operation": OP}),
    ("approval.decided", {"request_id": "r3", "approved": True, "by": "4343", "reason": ""}),
    ("guardrail.decision", {"rule_id": "no-delete", "action": "deny", "sql": "DELETE FROM t"}),
]


@pytest.fixture
def approvals(tmp_path: Path, signing_key: SigningKey) -> Path:
    return write_session(tmp_path / "sessions", signing_key, events=APPROVALS)


def test_summary_names_the_rule_and_outcome_of_each_approval(
    approvals: Path, trusted: Mapping[str, Ed25519PublicKey]
) -> None:
    cells = _render(render_summary(approvals, trusted)).cells
    whats = cells[2::3][-len(APPROVALS) :]
    assert "?" not in " ".join(whats)
    assert whats[2] == "DENIED no-drop: denied by 4242 (no): sql DROP TABLE users"
    assert whats[4] == "EXPIRED no-drop: expired by airlock: sql DROP TABLE users"
    assert whats[6] == "no-drop: approved by 4343: sql DROP TABLE users"
    assert whats[7] == "DENY no-delete: deny DELETE FROM t"


def test_ocsf_dispositions_for_denials_and_approvals(approvals: Path) -> None:
    records = {r["unmapped"]["airlock"]["seq"]: r for r in to_ocsf(iter_events(approvals), "s")}
    decided, expired, granted, denied_rule = records[3], records[5], records[7], records[8]
    for record in (decided, expired, denied_rule):
        assert (record["status"], record["status_id"], record["disposition_id"]) == (
            "Failure",
            2,
            2,
        )
        assert record["severity_id"] == 3
    assert (decided["disposition"], expired["disposition"]) == ("denied", "expired")
    assert decided["policy"]["uid"] == "no-drop" and denied_rule["policy"]["uid"] == "no-delete"
    assert (granted["status"], granted["disposition"], granted["disposition_id"]) == (
        "Success",
        "approved",
        1,
    )
    assert records[2]["disposition"] == "requested" and records[2]["disposition_id"] == 99


def test_search_columns_match_the_describer(approvals: Path) -> None:
    con = open_events([approvals.parent])
    _, rows = run_query(con, "SELECT seq, rule_id, outcome FROM events ORDER BY seq")
    describer = Describer()
    expected = [
        (e["seq"], *(lambda v: (v.rule_id, v.outcome))(describer.view(e)))
        for e in iter_events(approvals)
    ]
    assert rows == expected
    _, denied = run_query(con, "SELECT seq FROM events WHERE outcome = 'denied'")
    assert denied == [(3,)]
    _, by_rule = run_query(
        con, "SELECT type FROM events WHERE rule_id = 'no-drop' AND type = 'approval.decided'"
    )
    assert len(by_rule) == 2


def test_athena_ddl_reads_approvals_like_search() -> None:
    ddl = athena_ddl("s3://bucket/prefix")
    assert "json_extract_scalar(q" not in ddl  # no correlated subquery: a join Athena plans
    assert "LEFT JOIN approval_requests r" in ddl
    assert "json_extract_scalar(e.data, '$.operation.rule_id'), r.rule_id) AS rule_id" in ddl
    for outcome in ("'requested'", "'approved'", "'expired'", "'denied'"):
        assert outcome in ddl


def test_session_ids_and_urls_in_code_spans_render_without_backslashes(
    approvals: Path, trusted: Mapping[str, Ed25519PublicKey]
) -> None:
    parsed = _render(render_summary(approvals, trusted))
    assert parsed.code[0] == approvals.name  # e.g. 20261203T091552Z-378dcbae0a, no "\-"
    url = "s3://acme-audit/air_lock/github/acme/api-x/2026/12/03/77/" + approvals.name
    assert _render(f"Archived {code_span(url)}").code == [url]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1))
def test_code_span_renders_exactly_its_text(text: str) -> None:
    one_line = visible(" ".join(text.split()))  # invisible characters shown as escapes
    parsed = _render(code_span(text))
    if one_line:
        assert parsed.code == [one_line]
    assert parsed.tags.count("code") == 1 and set(parsed.tags) <= {"p", "code"}


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",))))
def test_escaped_table_cells_render_exactly_their_text_and_no_markup(text: str) -> None:
    one_line = visible(" ".join(text.split()))
    parsed = _render(f"| a |\n|---|\n| {escape_md(text)} |\n")
    assert set(parsed.tags) <= {"table", "thead", "tbody", "tr", "th", "td"}
    assert parsed.cells == [one_line]


def test_markup_from_the_log_stays_text() -> None:
    nasty = "<img src=x onerror=alert(1)> **bold** [l](javascript:x) | `c` &amp; \\-"
    parsed = _render(f"| a |\n|---|\n| {escape_md(nasty)} |\n")
    assert parsed.cells == [nasty] and "img" not in parsed.tags and "a" not in parsed.tags
    assert html.escape("<img") not in json.dumps(parsed.cells)


def test_the_summary_is_capped_with_a_link_to_the_full_report(
    tmp_path: Path, signing_key: SigningKey, trusted: Mapping[str, Ed25519PublicKey]
) -> None:
    many = [("process.exec", {"pid": i, "argv": ["sh", "-c", f"step {i}"]}) for i in range(3000)]
    session = write_session(tmp_path / "big", signing_key, events=many)
    link = "https://github.com/acme/api/actions/runs/77#artifacts"
    text = render_summary(session, trusted, report_link=link)
    assert len(text.encode()) < 20_000
    assert len(re.findall(r"^\| \d+ \| process\\\.exec", text, flags=re.M)) == 100
    assert "2900 more events not shown" in text
    assert _MD.render(text).count(f'href="{link}"') == 1


def test_ocsf_egress_denials_are_blocked_network_activity() -> None:
    denied = {"kind": "connect", "host": "evil.example", "port": 443, "outcome": "denied",
              "rule_id": "airlock.default-deny"}  # fmt: skip
    allowed = {**denied, "host": "pypi.org", "outcome": "allowed", "rule_id": "pypi"}
    events = [
        {"seq": 1, "type": "net.connect", "data": denied},
        {"seq": 2, "type": "net.connect", "data": allowed},
    ]
    blocked, opened = to_ocsf(events, "s")
    assert (blocked["class_uid"], blocked["disposition_id"], blocked["status"]) == (
        4001,
        2,
        "Failure",
    )
    assert blocked["policy"]["uid"] == "airlock.default-deny"
    assert (opened["disposition"], opened["disposition_id"], opened["status"]) == (
        "allowed",
        1,
        "Success",
    )


def test_show_says_the_same_as_the_summary(
    approvals: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from airlock._cli import main

    assert main(["show", str(approvals)]) == 0
    out = capsys.readouterr().out
    assert "DENIED no-drop: denied by 4242 (no): sql DROP TABLE users" in out
    assert "EXPIRED no-drop: expired by airlock" in out
    assert "no-drop: approved by 4343" in out and "?: ?" not in out
