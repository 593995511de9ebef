"""Long commands say how far they are: a rich bar (count, total, rate, time left) on a terminal,
one plain line per item otherwise."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from airlock._commands._progress import ItemProgress
from airlock.audit import SessionWriter, load_signing_key

REPO = Path(__file__).resolve().parents[2]


def test_without_a_terminal_one_line_per_item() -> None:
    out = io.StringIO()
    with ItemProgress("archived", 3, stream=out, tty=False) as progress:
        for name in ("a", "b", "c"):
            progress.advance(name)
    assert out.getvalue().splitlines() == [
        "airlock: archived 1/3: a",
        "airlock: archived 2/3: b",
        "airlock: archived 3/3: c",
    ]


def test_on_a_terminal_a_bar_with_total_and_time_left() -> None:
    out = io.StringIO()
    with ItemProgress("archived", 120, stream=out, tty=True) as progress:
        progress.advance("a")
        progress._bar.refresh()  # type: ignore[union-attr]  # what rich draws between ticks
        drawn = out.getvalue()
    assert "archived" in drawn and "1/120" in drawn and "1%" in drawn
    assert "\x1b[" in drawn  # drawn as a live bar, not lines
    assert "airlock: archived" not in drawn


def test_archive_of_many_sessions_reports_each_in_a_log(tmp_path: Path) -> None:
    sessions = tmp_path / "sessions"
    key = load_signing_key(None)
    for _ in range(3):
        writer = SessionWriter.create(sessions)
        writer.append("session.start", {"identity": {"platform": "local"}})
        writer.seal(key, exit_code=0)
    env = {**os.environ, "PYTHONPATH": str(REPO / "core")}
    done = subprocess.run(
        [sys.executable, "-m", "airlock._cli", "archive", str(sessions), "--to", str(tmp_path / "a")],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("airlock: archived")]
    assert [line.split(":")[1].strip() for line in lines] == [
        "archived 1/3", "archived 2/3", "archived 3/3",
    ]  # fmt: skip


def test_a_big_report_reads_every_event_once_through_the_progress_hook(tmp_path: Path) -> None:
    from airlock.archive.report import render_report

    writer = SessionWriter.create(tmp_path / "s")
    for i in range(50):
        writer.append("output", {"stream": "stdout", "text": f"line {i}\n"})
    writer.seal(load_signing_key(None), exit_code=0)
    seen: list[int] = []
    page = render_report(writer.path, {}, on_event=lambda: seen.append(1))
    assert len(seen) == 50 and "line 49" in page
