"""The HTML report in headless Chromium; the Markdown summary; the OCSF export."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.archive.cli import run_cli
from tests.archive.conftest import write_session

from airlock.archive.export_ocsf import to_ocsf
from airlock.archive.report import _script_json, render_report
from airlock.archive.summary import escape_md, render_summary
from airlock.audit import SigningKey, iter_events
from airlock.audit.describe import strip_ansi
from airlock.mask import Masker, MaskSettings

SECRET = "hunter2-super-secret-value"  # what the masker replaced: must never appear
_MASKER = Masker(MaskSettings(literals=(("env:PGPASSWORD", SECRET),)))
CHROMIUM = Path("/usr/bin/chromium")
_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

EVENTS: list[tuple[str, dict[str, Any]]] = [
    ("process.exec", {"pid": 7, "argv": ["psql", "-h", "db.internal", "-c", "DROP TABLE users"]}),
    ("output", {"stream": "stdout", "text": "\x1b[1;32mconnected\x1b[0m to db.internal\r\n"}),
    ("output", {"stream": "stdout", "text": _MASKER.mask_text(f"PGPASSWORD={SECRET}\n")}),
    (
        "output",
        {"stream": "stderr", "text": "<img src=https://evil.example/x.png onerror=alert(1)>\n"},
    ),
    ("db.query", {"sql": "DROP TABLE users", "gateway": "appdb"}),
    ("guardrail.decision", {"rule_id": "no-drop", "action": "require_approval"}),
    (
        "approval.requested",
        {
            "request_id": "r1",
            "operation": {"kind": "sql", "text": "DROP TABLE users", "rule_id": "no-drop"},
        },
    ),
    (
        "approval.decided",
        {"request_id": "r1", "approved": False, "by": "dba-lead", "reason": "not now"},
    ),
    ("http.request", {"method": "POST", "url": "https://github.com/acme/api/git-receive-pack"}),
    ("http.response", {"status": 403}),
    ("process.exit", {"pid": 7, "status": 1}),
]


@pytest.fixture
def session(tmp_path: Path, signing_key: SigningKey) -> Path:
    return write_session(tmp_path / "sessions", signing_key, events=EVENTS)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=_ARGS)
        yield browser
        browser.close()


def test_report_renders_filters_and_stays_offline(
    browser: Any,
    session: Path,
    tmp_path: Path,
    trusted: Mapping[str, Ed25519PublicKey],
) -> None:
    page_file = tmp_path / "report.html"
    page_file.write_text(render_report(session, trusted), encoding="utf-8")
    requests: list[str] = []
    page = browser.new_page()

    def route(r: Any) -> None:
        requests.append(r.request.url)
        if r.request.url.startswith("file://"):
            r.continue_()
        else:
            r.abort()

    page.route("**/*", route)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(page_file.as_uri())

    assert page.locator("#verification").inner_text().startswith("verified: 13 events")
    assert "verify ok" in (page.locator("#verification").get_attribute("class") or "")
    assert page.locator("#timeline-body tr").count() == 13
    assert "acme/api" in page.locator("#identity").inner_text()

    terminal = page.locator("#terminal").inner_text()
    assert "connected to db.internal" in terminal and "\x1b" not in terminal
    assert "PGPASSWORD=[MASKED:env:PGPASSWORD]" in terminal
    assert SECRET not in page.content()
    assert "<img src=https://evil.example/x.png onerror=alert(1)>" in terminal  # shown as text
    assert page.locator("img").count() == 0

    page.uncheck("input[data-type='output']")
    assert page.locator("#timeline-body tr:not([hidden])").count() == 10
    page.fill("#text-filter", "no-drop")
    visible = page.locator("#timeline-body tr:not([hidden]) td.type").all_inner_texts()
    assert visible == ["guardrail.decision", "approval.requested", "approval.decided"]
    assert page.locator("#shown").inner_text() == "3 of 13 events shown"
    assert page.locator("#timeline-body tr.denied td.type").all_inner_texts() == [
        "approval.decided"
    ]
    page.fill("#text-filter", "")
    page.check("input[data-type='output']")
    assert page.locator("#timeline-body tr:not([hidden])").count() == 13

    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert (tmp_path / "report.png").stat().st_size > 10_000
    assert [u for u in requests if not u.startswith("file://")] == []
    assert errors == []
    html = page_file.read_text()
    assert SECRET not in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html.split("airlock-data")[0])
    page.close()


def test_report_shows_a_failed_verification(
    browser: Any, session: Path, tmp_path: Path, trusted: Mapping[str, Ed25519PublicKey]
) -> None:
    log = session / "events.jsonl"
    log.write_bytes(log.read_bytes().replace(b"DROP TABLE users", b"SELECT 1 -- quiet"))
    assert (
        run_cli(
            [
                "report",
                str(session),
                "-o",
                str(tmp_path / "r.html"),
                "--key-file",
                _key(trusted, tmp_path),
            ]
        )
        == 0
    )
    page = browser.new_page()
    page.goto((tmp_path / "r.html").as_uri())
    badge = page.locator("#verification")
    assert "verification FAILED (modified" in badge.inner_text()
    assert "failed" in (badge.get_attribute("class") or "")
    page.close()


def _key(trusted: Mapping[str, Ed25519PublicKey], tmp_path: Path) -> str:
    from cryptography.hazmat.primitives import serialization

    (public,) = trusted.values()
    path = tmp_path / "trusted.pem"
    path.write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return str(path)


def test_markdown_summary_is_escaped_and_bounded(
    tmp_path: Path,
    signing_key: SigningKey,
    trusted: Mapping[str, Ed25519PublicKey],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    many = [
        ("db.query", {"sql": f"SELECT {i} FROM t -- <b>|x|</b> " + "y" * 200}) for i in range(8000)
    ]
    session = write_session(tmp_path / "s", signing_key, events=many)
    text = render_summary(session, trusted)
    assert len(text.encode()) < 1024 * 1024
    assert "more events not shown" in text
    assert "<b>" not in text and "&lt;b&gt;" in text
    assert "✅ verified" in text

    summary = tmp_path / "step-summary.md"
    small = write_session(tmp_path / "s", signing_key, events=EVENTS)
    argv = ["report", str(small), "--markdown", "step", "--key-file", _key(trusted, tmp_path)]
    assert run_cli(argv) == 80  # GITHUB_STEP_SUMMARY is not set
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    assert run_cli(argv) == 0
    assert "**DENIED** no\\-drop: denied by dba\\-lead \\(not now\\)" in summary.read_text()


def test_ocsf_export(session: Path, tmp_path: Path) -> None:
    out = tmp_path / "events.ocsf.jsonl"
    assert run_cli(["export", str(session), "--format", "ocsf", "-o", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 13
    by_type = {r["unmapped"]["airlock"]["type"]: r for r in records}
    assert by_type["process.exec"]["class_uid"] == 1007
    assert by_type["process.exec"]["process"]["cmd_line"].startswith("psql -h db.internal")
    assert by_type["http.request"]["type_uid"] == 400206  # HTTP Activity: Post
    assert by_type["approval.decided"]["status"] == "Failure"
    assert by_type["approval.decided"]["severity_id"] == 3
    assert all(
        r["metadata"]["uid"] == f"{session.name}:{r['unmapped']['airlock']['seq']}" for r in records
    )
    assert all(r["actor"] == {"user": {"name": "octocat"}} for r in records)
    assert all(r["time"] > 1_700_000_000_000 for r in records)
    assert next(to_ocsf(iter_events(session), "x"))["class_uid"] == 6002


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_script_json_cannot_break_out_of_the_script_element(text: str) -> None:
    encoded = _script_json({"t": text})
    assert "<" not in encoded and ">" not in encoded and "&" not in encoded
    assert json.loads(encoded) == {"t": text}


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_markdown_escape_leaves_no_markup(text: str) -> None:
    escaped = escape_md(text)
    assert "<" not in escaped and ">" not in escaped and "\n" not in escaped
    assert not re.search(r"(?<!\\)[|`*_\[\]]", escaped.replace("\\\\", ""))


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_strip_ansi_removes_every_escape(text: str) -> None:
    assert "\x1b" not in strip_ansi(text) and "\r" not in strip_ansi(text)


@pytest.mark.service
def test_report_and_export_straight_from_s3(
    session: Path,
    tmp_path: Path,
    moto_server: Any,
    s3: Any,
    trusted: Mapping[str, Ed25519PublicKey],
) -> None:
    from tests.archive.conftest import new_bucket

    from airlock.archive import archive_session
    from airlock.archive.s3 import S3Sink

    bucket = new_bucket(s3)
    receipt = archive_session(session, S3Sink(bucket, "a", endpoint_url=moto_server.endpoint_url))
    endpoint = ["--endpoint-url", moto_server.endpoint_url]
    key = ["--key-file", _key(trusted, tmp_path)]
    page = tmp_path / "from-s3.html"
    assert run_cli(["report", receipt.url, "-o", str(page), *endpoint, *key]) == 0
    assert "verified: 13 events" in page.read_text()
    out = tmp_path / "ocsf.jsonl"
    assert run_cli(["export", receipt.url, str(session), "-o", str(out), *endpoint]) == 0
    assert len(out.read_text().splitlines()) == 26
