"""A writer that dies or runs out of space leaves a log that seals as incomplete and verifies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from airlock.audit import (
    SessionWriter,
    SigningKey,
    find_unsealed,
    seal_session,
    verify_session,
)
from airlock.errors import UsageError, VerificationFailed

Trusted = dict[str, Ed25519PublicKey]

_APPEND_FOREVER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from airlock.audit import SessionWriter
    writer = SessionWriter.create(Path(sys.argv[1]), "crashed")
    i = 0
    while True:
        writer.append("output", {"stream": "stdout", "text": "x" * (i % 3000), "i": i})
        i += 1
        if i == 200:
            print("ready", flush=True)
    """
)

_FILL_TO_LIMIT = textwrap.dedent(
    """
    import json, resource, signal, sys
    from pathlib import Path
    from airlock.audit import SessionWriter, load_signing_key
    from airlock.errors import RecordingError
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))
    writer = SessionWriter.create(Path(sys.argv[1]), "full")
    error = again = None
    try:
        while True:
            writer.append("output", {"text": "y" * 700})
    except RecordingError as exc:
        error = exc.message
    try:
        writer.append("output", {"text": "after"})
    except RecordingError as exc:
        again = exc.message
    manifest = writer.seal(load_signing_key(Path(sys.argv[2])), exit_code=0)
    print(json.dumps({"seq": writer.seq, "error": error, "again": again, "manifest": manifest}))
    """
)


def test_sigkilled_writer_seals_incomplete_and_verifies(
    tmp_path: Path, key: SigningKey, trusted: Trusted
) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", _APPEND_FOREVER, str(tmp_path)], stdout=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    session = tmp_path / "crashed"
    assert find_unsealed(tmp_path) == [session]
    before = (session / "events.jsonl").read_bytes()

    manifest = seal_session(session, key)

    assert (session / "events.jsonl").read_bytes() == before
    assert (manifest["status"], manifest["exit_code"]) == ("incomplete", None)
    assert manifest["reason"] == "session did not end cleanly"
    assert manifest["event_count"] >= 200
    assert manifest["log_bytes"] == before.rfind(b"\n") + 1
    report = verify_session(session, trusted)
    assert (report.status, report.event_count) == ("incomplete", manifest["event_count"])
    assert find_unsealed(tmp_path) == []


def test_torn_last_line_is_left_in_place_and_excluded(
    tmp_path: Path, key: SigningKey, trusted: Trusted
) -> None:
    writer = SessionWriter.create(tmp_path, "torn")
    for i in range(5):
        writer.append("output", {"i": i})
    writer.close()
    events = tmp_path / "torn" / "events.jsonl"
    complete = events.read_bytes()
    with events.open("ab") as handle:
        handle.write(b'{"seq":5,"ts":"2026-')  # what a SIGKILL mid-write leaves
    torn = events.read_bytes()

    manifest = seal_session(tmp_path / "torn", key, reason="runner lost")

    assert events.read_bytes() == torn
    assert (manifest["event_count"], manifest["log_bytes"]) == (5, len(complete))
    assert manifest["reason"] == "runner lost"
    report = verify_session(tmp_path / "torn", trusted)
    assert report.status == "incomplete"
    assert report.warnings == ("20 byte(s) of a partial last line are not covered by the seal",)


def _run_writer(script: str, tmp_path: Path, key: SigningKey) -> dict[str, Any]:
    """Run a writer script in its own process (it sets limits on itself); its JSON result."""
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(key.private_pem())
    os.chmod(key_file, 0o600)
    sessions = tmp_path / "sessions"
    done = subprocess.run(
        [sys.executable, "-c", script, str(sessions), str(key_file)],
        capture_output=True,
        check=True,
        timeout=60,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_file_size_limit_is_a_recording_error_and_earlier_lines_verify(
    tmp_path: Path, key: SigningKey, trusted: Trusted
) -> None:
    result = _run_writer(_FILL_TO_LIMIT, tmp_path, key)
    assert "could not write to session log" in result["error"]
    assert "File too large" in result["error"]
    assert "stopped after a failed write" in result["again"]
    manifest = result["manifest"]
    assert manifest["status"] == "incomplete"
    assert "EFBIG" in manifest["reason"]
    assert manifest["event_count"] == result["seq"] > 0
    size = (tmp_path / "sessions" / "full" / "events.jsonl").stat().st_size
    assert manifest["log_bytes"] <= size <= 50_000
    report = verify_session(tmp_path / "sessions" / "full", trusted)
    assert (report.status, report.event_count) == ("incomplete", result["seq"])


_FILL_LATER = textwrap.dedent(
    """
    import json, resource, signal, sys
    from pathlib import Path
    from airlock.audit import SessionWriter, load_signing_key
    from airlock.errors import RecordingError
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
    writer = SessionWriter.create(Path(sys.argv[1]), "full")
    shown, error = [], None
    try:
        for i in range(1000):
            writer.append_later("output", {"text": "z" * 7000, "i": i}, lambda i=i: shown.append(i))
    except RecordingError as exc:
        error = exc.message
    writer.flush()
    manifest = writer.seal(load_signing_key(Path(sys.argv[2])), exit_code=0)
    print(json.dumps({"seq": writer.seq, "shown": shown, "error": error, "manifest": manifest}))
    """
)


def test_a_failed_queued_write_shows_nothing_more_and_seals_incomplete(
    tmp_path: Path, key: SigningKey, trusted: Trusted
) -> None:
    result = _run_writer(_FILL_LATER, tmp_path, key)
    assert "stopped after a failed write" in result["error"]
    # Exactly the lines on disk were shown: none after the failed one.
    assert result["shown"] == list(range(result["seq"])) and result["seq"] > 0
    manifest = result["manifest"]
    assert (manifest["status"], manifest["event_count"]) == ("incomplete", result["seq"])
    assert "EFBIG" in manifest["reason"]
    report = verify_session(tmp_path / "sessions" / "full", trusted)
    assert (report.status, report.event_count) == ("incomplete", result["seq"])


def test_seal_session_refuses_a_sealed_session(tmp_path: Path, key: SigningKey) -> None:
    writer = SessionWriter.create(tmp_path)
    writer.append("output", {})
    writer.seal(key, exit_code=0)
    with pytest.raises(UsageError, match="already sealed"):
        seal_session(writer.path, key)


def test_seal_session_refuses_what_is_not_a_session(tmp_path: Path, key: SigningKey) -> None:
    with pytest.raises(UsageError, match="not a session directory"):
        seal_session(tmp_path, key)


def test_a_broken_chain_is_never_signed(tmp_path: Path, key: SigningKey) -> None:
    writer = SessionWriter.create(tmp_path)
    for i in range(4):
        writer.append("output", {"i": i})
    writer.close()
    events = writer.path / "events.jsonl"
    lines = events.read_bytes().splitlines(keepends=True)
    events.write_bytes(b"".join([lines[0], lines[2], lines[3]]))
    with pytest.raises(VerificationFailed) as info:
        seal_session(writer.path, key)
    assert (info.value.kind, info.value.line) == ("deleted", 2)
    assert "refusing to seal" in info.value.message
    assert not (writer.path / "manifest.json").exists()


def test_empty_crashed_session_seals(tmp_path: Path, key: SigningKey, trusted: Trusted) -> None:
    SessionWriter.create(tmp_path, "empty").close()
    assert seal_session(tmp_path / "empty", key)["event_count"] == 0
    assert verify_session(tmp_path / "empty", trusted).status == "incomplete"


def test_find_unsealed_on_a_missing_dir(tmp_path: Path) -> None:
    assert find_unsealed(tmp_path / "nothing-here") == []
