"""A big queued output line that the file-size limit cuts in the middle of its writev
(a short write, then EFBIG on the retry) is never shown, breaks the writer, and leaves the lines
before it readable with their chain intact. Also a line of many pieces (> IOV_MAX is not reachable
from output events: they have a handful of keys)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path


def test_a_big_line_cut_by_rlimit_fsize_is_never_shown(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import resource, signal, json
        from pathlib import Path
        from airlock.audit import SessionWriter
        from airlock.audit.reader import iter_events
        from airlock.errors import RecordingError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        root = Path({str(tmp_path)!r})
        w = SessionWriter.create(root, "s1")
        shown = []
        w.append_later("output", {{"i": 0, "text": "a" * 300_000}}, lambda: shown.append(0))
        w.flush()
        size = (root / "s1" / "events.jsonl").stat().st_size
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 200_000, resource.RLIM_INFINITY))
        w.append_later("output", {{"i": 1, "text": "b\\t" * 400_000}}, lambda: shown.append(1))
        w.flush()
        try:
            w.append_later("output", {{"i": 2, "text": "c" * 5000}}, lambda: shown.append(2))
            w.flush()
            raised = False
        except RecordingError:
            raised = True
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
        lines = (root / "s1" / "events.jsonl").read_bytes().split(b"\\n")
        print(json.dumps({{"shown": shown, "raised": raised, "partial_tail": len(lines[-1]),
                           "complete": len(lines) - 1}}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    import json

    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["shown"] == [0]  # the cut line and the one after it were never shown
    assert result["raised"] is True  # the producer hears of the failure
    assert result["complete"] == 1
