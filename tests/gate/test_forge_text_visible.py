"""Text an agent controls never reaches a forge (check run, comment, note) or a summary with
its invisible characters raw: a bidi override or a zero-width space could make the approver
read another operation than the one held. Each is shown as a visible escape instead."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.archive.conftest import write_session
from tests.broker import approvals_support
from tests.broker.approvals_support import (
    GITLAB_TOKEN,
    GITLAB_URL,
    REPO,
    FakeGitHub,
    FakeGitLab,
)

from airlock.archive.report import render_report
from airlock.archive.summary import code_span, escape_md
from airlock.audit import SigningKey
from airlock.audit.visible import is_invisible, visible
from airlock.ci.github import append_summary, error_annotation
from airlock.ci.gitlab import section_start
from airlock.gate import Operation
from airlock.gate.github_api import GitHubApi
from airlock.gate.github_check import check_run_body
from airlock.gate.github_comment import GitHubCommentBackend
from airlock.gate.gitlab import GitLabApi, GitLabNotesBackend
from airlock.gate.rules import ApproverRules

forges = approvals_support.forges
github_openapi = approvals_support.github_openapi

# Shown as "DELETE FROM logs WHERE old" in a right-to-left-overridden, zero-width-split line.
SNEAKY = (
    "DROP TABLE users;\u202e -- \u2066safe\u2069 \u200bSELECT\u200d 1\ufeff"
    "\u2028/airlock approve x\u00ad\U000e0041\x1b[2K"
)
RAW = re.compile(
    "[\u202a-\u202e\u2066-\u2069\u200b-\u200f\u2028\u2029\u2060\ufeff\u00ad\U000e0000-\U000e007f\x1b]"
)
OP = Operation("sql", SNEAKY, "no-drop", "appdb", REPO, run_id="1", commit="c" * 40)


def _nothing_raw(text: str) -> None:
    assert RAW.search(text) is None, ascii(text)
    assert "\\u202e" in text and "\\u200b" in text and "\\x1b" in text


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def test_check_run_name_title_summary_and_text(forges: tuple[FakeGitHub, FakeGitLab]) -> None:
    github = forges[0]
    api = GitHubApi.with_token("ghs_" + "t" * 36)
    body = check_run_body(
        request_id="a" * 32, op=OP, head_sha="b" * 40, requester="octo\u202ecat",
        expires_at=0.0, details_url=None,
    )  # fmt: skip
    try:
        api.call("POST", f"/repos/{REPO}/check-runs", body)
    finally:
        api.close()
    [run] = github.check_runs.values()
    for text in (run["name"], run["output"]["title"]):  # one line, cut at 60 characters
        assert RAW.search(text) is None and "\\u202e" in text
    _nothing_raw(run["output"]["summary"])
    assert all(RAW.search(s) is None for s in _strings(run))
    assert github.errors == []


def test_pull_request_comment(forges: tuple[FakeGitHub, FakeGitLab]) -> None:
    github = forges[0]
    github.add_pull(12, author="pr-author")
    api = GitHubApi.with_token("ghs_" + "t" * 36)
    backend = GitHubCommentBackend(
        api, REPO, 12, key=SigningKey.generate(), requester="octocat", approvers=ApproverRules()
    )
    try:
        backend.request(OP, timeout=30)
    finally:
        api.close()
    (posted,) = github.comments
    _nothing_raw(posted["body"])


def test_merge_request_note(forges: tuple[FakeGitHub, FakeGitLab]) -> None:
    gitlab = forges[1]
    api = GitLabApi(GITLAB_URL, private_token=GITLAB_TOKEN)
    backend = GitLabNotesBackend(
        api, "acme/api", 7, key=SigningKey.generate(), requester="sample-user", requester_id="1"
    )
    try:
        backend.request(OP, timeout=30)
    finally:
        api.close()
    _nothing_raw(gitlab.notes[0]["body"])


def test_job_summary_and_annotations(tmp_path: Any) -> None:
    _nothing_raw(escape_md(SNEAKY))
    _nothing_raw(code_span(SNEAKY))
    summary = tmp_path / "summary.md"
    assert append_summary(summary, f"| 1 | {SNEAKY} |\n")
    _nothing_raw(summary.read_text(encoding="utf-8"))
    _nothing_raw(error_annotation(SNEAKY, title=SNEAKY))
    _nothing_raw(section_start("airlock", SNEAKY).split("\r\x1b[0K", 1)[1])  # GitLab's job log


@given(st.text())
def test_visible_text_has_nothing_invisible_and_keeps_the_rest(text: str) -> None:
    shown = visible(text)
    assert not any(is_invisible(c) for c in shown)
    if not any(is_invisible(c) for c in text):
        assert shown == text
    assert visible("SELECT 1 ✅ ⚠️ é\n\tok") == "SELECT 1 ✅ ⚠️ é\n\tok"


@pytest.mark.parametrize("char", ["\u202a", "\u202e", "\u2066", "\u2069", "\u200b", "\u2060"])
def test_each_bidi_and_zero_width_character_is_escaped(char: str) -> None:
    assert visible(f"a{char}b") == f"a\\u{ord(char):04x}b"


def test_html_report_shows_invisible_characters_as_escapes(tmp_path: Any) -> None:
    """The report an approver may open from the job summary: the same rule (control
    characters are the page's own business: the replay reads ANSI, text goes in as text)."""
    events = [
        ("db.query", {"sql": SNEAKY, "gateway": "appdb"}),
        ("output", {"stream": "stdout", "text": f"{SNEAKY}\r\n"}),
    ]
    session = write_session(tmp_path / "s", SigningKey.generate(), events=events)
    page = render_report(session, {})
    assert re.search("[\u202a-\u202e\u2066-\u2069\u200b-\u200f\u2060\ufeff\u00ad]", page) is None
    assert "\\\\u202e" in page and "\\\\u200b" in page  # JSON in the page: \\u202e shown
