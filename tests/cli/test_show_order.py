"""`airlock show` places a process event at the time the exec happened (strace's own clock,
``data.at``), not when its batch was read from the trace FIFO: an exec comes before the output
it printed, and its offset is the exec's."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from airlock._cli import main
from airlock.audit import SessionWriter, SigningKey
from airlock.events import EventType


def test_exec_is_shown_when_it_happened(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    writer = SessionWriter.create(tmp_path, "s1")
    writer.append(EventType.SESSION_START, {"argv": ["sh"]})
    exec_at = time.time()
    time.sleep(0.05)  # the trace batch is read after the command's output
    writer.append(EventType.OUTPUT, {"stream": "stdout", "text": "hello\n"})
    writer.append(
        EventType.PROCESS_EXEC,
        {"pid": 7, "ppid": 1, "path": "/bin/echo", "argv": ["echo", "hello"], "at": exec_at},
    )
    writer.append(EventType.PROCESS_EXIT, {"pid": 7, "status": 0, "at": exec_at + 0.001})
    writer.append(EventType.SESSION_END, {"exit_status": 0})
    writer.seal(SigningKey.generate(), exit_code=0)
    assert main(["show", str(tmp_path / "s1")]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if re.match(r"\s*[+-]\d", line)]
    types = [line.split()[1] for line in lines]
    assert types == ["session.start", "process.exec", "process.exit", "output", "session.end"]
    offsets = [float(line.split()[0].rstrip("s")) for line in lines]
    assert offsets == sorted(offsets)  # the timeline never goes back


def test_the_report_lists_an_exec_when_it_happened_too(tmp_path: Path) -> None:
    """The HTML report placed process events at the time their trace batch was read (after the
    output they printed), while `airlock show` placed them at the exec: one timeline for both."""
    import json

    from airlock.archive.report import render_report

    writer = SessionWriter.create(tmp_path, "s2")
    writer.append(EventType.SESSION_START, {"argv": ["sh"]})
    exec_at = time.time()
    time.sleep(0.05)
    writer.append(EventType.OUTPUT, {"stream": "stdout", "text": "hello\n"})
    writer.append(
        EventType.PROCESS_EXEC,
        {"pid": 7, "ppid": 1, "path": "/bin/echo", "argv": ["echo", "hello"], "at": exec_at},
    )
    writer.append(EventType.SESSION_END, {"exit_status": 0})
    key = SigningKey.generate()
    writer.seal(key, exit_code=0)

    page = render_report(tmp_path / "s2", {})
    data = re.search(r'<script id="airlock-data" type="application/json">(.*?)</script>', page)
    assert data is not None
    rows = json.loads(data.group(1))["events"]
    assert [row["type"] for row in rows] == [
        "session.start",
        "process.exec",
        "output",
        "session.end",
    ]
    offsets = [float(row["offset"].rstrip("s")) for row in rows]
    assert offsets == sorted(offsets) and offsets[1] < offsets[2]
