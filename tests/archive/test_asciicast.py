"""`airlock export --format asciicast`: the terminal with its timing, read back by asciinema."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.archive.cli import run_cli
from tests.archive.conftest import write_session

from airlock.archive.asciicast import frames
from airlock.audit import SigningKey, iter_events

OUTPUT = ["\x1b[1;32mbuild\x1b[0m ok\r\n", "password=[MASKED:env:X]\r\n", "done ✓\r\n"]
ASCIINEMA = Path(sys.executable).parent / "asciinema"


def test_export_is_asciicast_v2_that_asciinema_reads(
    tmp_path: Path, signing_key: SigningKey
) -> None:
    session = write_session(
        tmp_path / "s",
        signing_key,
        events=[("output", {"stream": "stdout", "text": t}) for t in OUTPUT]
        + [("process.exec", {"pid": 1, "argv": ["ls"]})],
    )
    cast = tmp_path / "session.cast"
    assert run_cli(["export", str(session), "--format", "asciicast", "-o", str(cast)]) == 0
    header, *lines = [json.loads(line) for line in cast.read_text().splitlines()]
    assert header["version"] == 2 and header["width"] > 0 and "timestamp" in header
    assert [line[2] for line in lines] == OUTPUT and all(line[1] == "o" for line in lines)
    times = [line[0] for line in lines]
    assert times == sorted(times) and times[0] >= 0
    shown = subprocess.run([str(ASCIINEMA), "cat", str(cast)], capture_output=True, check=True)
    assert shown.stdout.decode() == "".join(OUTPUT)


def test_frames_are_relative_to_the_session_start(tmp_path: Path, signing_key: SigningKey) -> None:
    session = write_session(tmp_path / "s", signing_key, events=[("output", {"text": "x"})])
    [(seconds, text)] = list(frames(iter_events(session)))
    assert text == "x" and 0 <= seconds < 5
