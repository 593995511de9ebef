"""The report's replay, conversation view and lazy timeline, in headless Chromium."""

from __future__ import annotations

import html as htmllib
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from tests.archive.conftest import write_session
from tests.archive.test_report import _ARGS, CHROMIUM

from airlock.archive.report import render_report
from airlock.audit import SigningKey

AGENT_EVENTS: list[tuple[str, dict[str, Any]]] = [
    ("output", {"stream": "stdout", "text": "\x1b[1;31mred alert\x1b[0m plain\r\n"}),
    (
        "llm.request",
        {"gateway": "model", "model": "claude-x", "messages": [{"role": "user", "content": "ls"}]},
    ),
    (
        "llm.response",
        {
            "gateway": "model",
            "outcome": "forwarded",
            "text": "running ls",
            "tool_calls": [{"name": "Bash", "arguments": {"command": "ls -la"}}],
        },
    ),
    ("process.exec", {"pid": 9, "argv": ["ls", "-la"]}),
    ("output", {"stream": "stdout", "text": "progress 10%\rprogress 100%\r\n"}),
    ("output", {"stream": "stdout", "text": "<script>alert(1)</script>\r\n"}),
    (
        "mcp.request",
        {"method": "tools/call", "tool": "add", "arguments": {"a": 1}, "action": "allow"},
    ),
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=str(CHROMIUM), args=_ARGS)
        yield launched
        launched.close()


def _open(browser: Any, html: str, tmp_path: Path) -> tuple[Any, list[str]]:
    page_file = tmp_path / "report.html"
    page_file.write_text(html, encoding="utf-8")
    page = browser.new_page()
    problems: list[str] = []
    page.route(
        "**/*",
        lambda r: (
            r.continue_()
            if r.request.url.startswith("file://")
            else (problems.append(r.request.url), r.abort())
        ),
    )
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.goto(page_file.as_uri())
    return page, problems


def test_replay_plays_seeks_and_links_the_transcript(
    browser: Any,
    tmp_path: Path,
    signing_key: SigningKey,
    trusted: Mapping[str, Ed25519PublicKey],
) -> None:
    session = write_session(tmp_path / "s", signing_key, events=AGENT_EVENTS)
    html = render_report(session, trusted)
    assert htmllib.escape("default-src 'none';") in html  # the CSP is kept
    page, problems = _open(browser, html, tmp_path)

    screen = page.locator("#replay-screen")
    assert screen.inner_text() == ""  # nothing until played or sought
    page.select_option("#replay-speed", "20")
    page.click("#replay-play")
    page.wait_for_selector("#replay-screen[data-frames='3']")  # the page's CSP forbids eval
    text = screen.inner_text()
    assert "red alert plain" in text and "\x1b" not in text
    assert "progress 100%" in text and "progress 10%" not in text  # \r rewrites the line
    assert "<script>alert(1)</script>" in text  # shown as text, never run
    assert page.locator("#replay-screen span.f1.a-b").inner_text() == "red alert"

    page.eval_on_selector(
        "#replay-seek", "(r) => { r.value = '0'; r.dispatchEvent(new Event('input')); }"
    )
    assert page.locator("#replay-clock").inner_text() == "0.00 s"
    end = page.eval_on_selector("#replay-seek", "(r) => r.max")
    page.eval_on_selector(
        "#replay-seek", f"(r) => {{ r.value = '{end}'; r.dispatchEvent(new Event('input')); }}"
    )
    assert screen.get_attribute("data-frames") == "3"
    # The seek bar reaches any frame time: a 0.01 step snapped a last frame at 0.0234 s to
    # 0.02 s (and one at 0.004 s to 0: no frames), so "seek to the end" missed frames.
    reach = "(r) => { r.max = '0.0234'; r.value = '0.0234'; return Number(r.value); }"
    assert page.eval_on_selector("#replay-seek", reach) == 0.0234

    conversation = page.locator("#conversation").inner_text()
    assert "user: ls" in conversation and "running ls" in conversation
    assert 'Bash {"command":"ls -la"}' in conversation and "MCP add [allow]" in conversation
    page.click("#conversation a:has-text('process.exec')")
    row = page.locator("tr.flash")
    assert row.locator("td.type").inner_text() == "process.exec"
    assert row.locator("details").get_attribute("open") is not None
    page.screenshot(path=str(tmp_path / "replay.png"), full_page=True)
    assert problems == []
    page.close()


def test_six_thousand_events_render_lazily_and_completely(
    browser: Any,
    tmp_path: Path,
    signing_key: SigningKey,
    trusted: Mapping[str, Ed25519PublicKey],
) -> None:
    events = [("process.exec", {"pid": i, "argv": ["step", str(i)]}) for i in range(6000)]
    session = write_session(tmp_path / "s", signing_key, events=events)
    page, problems = _open(browser, render_report(session, trusted), tmp_path)
    page.wait_for_selector("body[data-timeline='complete']", state="attached")
    assert page.locator("#timeline-body tr").count() == 6002
    assert re.fullmatch(r"6002 of 6002 events shown", page.locator("#shown").inner_text())
    page.fill("#text-filter", "step 5999")
    assert page.locator("#timeline-body tr:not([hidden])").count() == 1
    assert problems == []
    page.close()
