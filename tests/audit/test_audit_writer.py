"""SessionWriter: the exact line layout, the chain, file modes, threads, and the seal."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import stat
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

import airlock.audit
from airlock.audit import (
    SessionWriter,
    SigningKey,
    iter_events,
    new_session_id,
    verify_session,
)
from airlock.audit._format import canonical_json
from airlock.errors import RecordingError, UsageError, VerificationFailed
from airlock.events import EventType

Trusted = dict[str, Ed25519PublicKey]


def test_public_api_is_pinned() -> None:
    assert set(airlock.audit.__all__) == {
        "FAILURE_KINDS",
        "SessionWriter",
        "SigningKey",
        "VerifyReport",
        "default_key_path",
        "find_unsealed",
        "iter_events",
        "key_id_for",
        "load_public_keys",
        "load_signing_key",
        "new_session_id",
        "seal_session",
        "verify_session",
    }


def test_session_ids_are_time_sortable_and_unique() -> None:
    ids = [new_session_id() for _ in range(50)]
    assert all(re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{10}", i) for i in ids)
    assert len(set(ids)) == 50


def test_lines_have_the_documented_layout_and_chain(tmp_path: Path) -> None:
    writer = SessionWriter.create(tmp_path, "s1")
    assert writer.append(EventType.OUTPUT, {"text": 'é ✓ \n "q"'}) == 0
    assert writer.append("process.exit", {"pid": 3, "status": 0}) == 1
    raw = (tmp_path / "s1" / "events.jsonl").read_bytes()
    assert raw.endswith(b"\n") and raw.count(b"\n") == 2
    lines = raw.splitlines()
    genesis = hashlib.sha256(b"airlock-genesis:s1").hexdigest()
    expected_prev = [genesis, hashlib.sha256(lines[0]).hexdigest()]
    for seq, line in enumerate(lines):
        event = json.loads(line)
        assert list(event) == ["seq", "ts", "type", "prev", "data"]
        assert (event["seq"], event["prev"]) == (seq, expected_prev[seq])
        compact = json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()
        assert compact == line
    assert "é ✓".encode() in lines[0]  # UTF-8, not \u escapes
    assert writer.head == hashlib.sha256(lines[1]).hexdigest()
    assert writer.seq == 2


def test_modes_are_private(tmp_path: Path, key: SigningKey) -> None:
    writer = SessionWriter.create(tmp_path / "sessions")
    writer.append("output", {"text": "x"})
    writer.seal(key, exit_code=0)
    assert stat.S_IMODE(writer.path.stat().st_mode) == 0o700
    assert stat.S_IMODE((writer.path / "events.jsonl").stat().st_mode) == 0o600
    assert stat.S_IMODE((writer.path / "manifest.json").stat().st_mode) == 0o600


def test_session_dir_in_a_file_is_a_recording_error_naming_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(RecordingError) as info:
        SessionWriter.create(blocker / "sessions")
    assert str(blocker) in info.value.message


def test_existing_or_unsafe_session_ids_are_refused(tmp_path: Path) -> None:
    SessionWriter.create(tmp_path, "same").close()
    with pytest.raises(UsageError, match="already exists"):
        SessionWriter.create(tmp_path, "same")
    for bad in ("../escape", "a/b", "", ".hidden"):
        with pytest.raises(UsageError, match="invalid session id"):
            SessionWriter.create(tmp_path, bad)


def test_seal_writes_a_signed_manifest(tmp_path: Path, key: SigningKey) -> None:
    writer = SessionWriter.create(tmp_path, "s1")
    for i in range(3):
        writer.append("output", {"i": i})
    manifest = writer.seal(key, exit_code=7)
    on_disk = json.loads((tmp_path / "s1" / "manifest.json").read_bytes())
    assert on_disk == manifest
    events = (tmp_path / "s1" / "events.jsonl").read_bytes()
    assert manifest["format"] == "airlock-session/1"
    assert (manifest["status"], manifest["exit_code"], manifest["reason"]) == ("complete", 7, None)
    assert (manifest["event_count"], manifest["last_seq"]) == (3, 2)
    assert manifest["log_bytes"] == len(events)
    assert manifest["log_sha256"] == hashlib.sha256(events).hexdigest()
    assert manifest["head"] == hashlib.sha256(events.splitlines()[-1]).hexdigest()
    assert manifest["genesis"] == hashlib.sha256(b"airlock-genesis:s1").hexdigest()
    assert manifest["checkpoints"] == []
    assert manifest["started_at"] <= manifest["ended_at"] <= manifest["sealed_at"]
    [sig] = manifest["signatures"]
    assert (sig["alg"], sig["key_id"]) == ("Ed25519", key.key_id)
    body = canonical_json({k: v for k, v in manifest.items() if k != "signatures"})
    key.public_key.verify(base64.b64decode(sig["sig"]), body)  # raises if wrong


def test_seal_digest_covers_big_and_small_lines_in_order(
    tmp_path: Path, key: SigningKey, trusted: Trusted
) -> None:
    """Megabyte lines are hashed for the seal on another thread, small ones in batches."""
    writer = SessionWriter.create(tmp_path, "s1")
    sizes = [10, 300_000, 5, 5, 70_000, *[200] * 400, 1_200_000, 3]
    for i, size in enumerate(sizes):
        writer.append("output", {"stream": "stdout", "text": f"{i}:" + 'x"\n' * size})
    manifest = writer.seal(key, exit_code=0)
    events = (tmp_path / "s1" / "events.jsonl").read_bytes()
    assert manifest["log_bytes"] == len(events)
    assert manifest["log_sha256"] == hashlib.sha256(events).hexdigest()
    assert manifest["head"] == hashlib.sha256(events.splitlines()[-1]).hexdigest()
    assert verify_session(tmp_path / "s1", trusted).event_count == len(sizes)


def test_queued_events_keep_their_order_and_run_then_once_written(
    tmp_path: Path, key: SigningKey, trusted: Trusted
) -> None:
    writer = SessionWriter.create(tmp_path, "s1")
    events = tmp_path / "s1" / "events.jsonl"
    on_disk_when_shown: list[int] = []

    def show(i: int) -> None:  # runs on the writer's thread, after the line is written
        on_disk_when_shown.append(events.read_bytes().count(b"\n"))

    for i in range(30):
        if i % 3 == 0:
            assert writer.append("process.exec", {"i": i}) == i  # waits for the queued ones
        else:
            text = 'big\t"output"\n' * (i * 1000)
            writer.append_later("output", {"i": i, "text": text}, lambda i=i: show(i))
    writer.flush()
    assert writer.seq == 30
    assert on_disk_when_shown == [i + 1 for i in range(30) if i % 3]
    assert [e["data"]["i"] for e in iter_events(tmp_path / "s1")] == list(range(30))
    writer.seal(key, exit_code=0)
    assert verify_session(tmp_path / "s1", trusted).event_count == 30
    with pytest.raises(UsageError):
        writer.append_later("output", {"text": "late"})


def test_a_stuck_display_does_not_hold_up_other_threads(tmp_path: Path) -> None:
    """Showing output may block (a paused terminal); a gateway's events still get written."""
    writer = SessionWriter.create(tmp_path, "s1")
    release, showing = threading.Event(), threading.Event()

    def stuck_show() -> None:
        showing.set()
        release.wait(30)

    writer.append_later("output", {"text": "shown later"}, stuck_show)
    assert showing.wait(30)
    other = threading.Thread(target=lambda: writer.append("http.request", {"path": "/x"}))
    other.start()
    other.join(30)
    try:
        assert not other.is_alive()  # written while the display is stuck
        assert writer.seq == 2
    finally:
        release.set()
    writer.append("process.exec", {"pid": 1})  # the queueing thread waits for its own
    assert [e["type"] for e in iter_events(tmp_path / "s1")] == [
        "output",
        "http.request",
        "process.exec",
    ]
    writer.close()


def test_queued_data_that_is_not_json_is_refused_at_once(tmp_path: Path) -> None:
    writer = SessionWriter.create(tmp_path, "s1")
    with pytest.raises(TypeError):
        writer.append_later("output", {"text": object()})
    writer.flush()
    assert writer.seq == 0 and not writer.broken
    with pytest.raises(TypeError):  # a big text with it: still refused at once
        writer.append_later("output", {"text": "x" * 9000, "n": object()})
    with pytest.raises(ValueError, match="not JSON compliant"):
        writer.append_later("output", {"text": "x" * 9000, "n": float("nan")})
    assert writer.seq == 0 and not writer.broken


def test_queued_big_text_is_recorded_as_it_was_when_queued(tmp_path: Path) -> None:
    """A big text is escaped on the writer's thread: from a copy of the mapping taken at the
    call, so a caller that changes its dict afterwards does not change the record."""
    writer = SessionWriter.create(tmp_path, "s1")
    release, showing = threading.Event(), threading.Event()
    writer.append_later("output", {"text": "first"}, lambda: (showing.set(), release.wait(30)))
    assert showing.wait(30)  # the writer's thread is busy: the next event waits in the queue
    data = {"stream": "stdout", "text": 'a"\\\x1b\n' * 2000 + "\udcff", "n": 7}
    writer.append_later("output", data)
    data["text"], data["n"] = "changed", 8
    release.set()
    writer.close()
    _, second = iter_events(tmp_path / "s1")
    assert second["data"] == {"stream": "stdout", "text": 'a"\\\x1b\n' * 2000 + "\udcff", "n": 7}


def test_after_seal_the_writer_refuses_more(tmp_path: Path, key: SigningKey) -> None:
    writer = SessionWriter.create(tmp_path)
    writer.append("output", {})
    writer.seal(key, exit_code=0)
    with pytest.raises(UsageError):
        writer.append("output", {})
    with pytest.raises(UsageError, match="already sealed"):
        writer.seal(key, exit_code=0)
    writer.close()  # harmless after seal


def test_incomplete_seal_verifies_as_incomplete(
    tmp_path: Path, key: SigningKey, trusted: Trusted
) -> None:
    writer = SessionWriter.create(tmp_path)
    writer.append("output", {"text": "x"})
    writer.seal(key, exit_code=None, status="incomplete", reason="stopped by test")
    report = verify_session(writer.path, trusted)
    assert (report.status, report.reason) == ("incomplete", "stopped by test")


def test_bad_status_and_bad_type_are_refused(tmp_path: Path, key: SigningKey) -> None:
    writer = SessionWriter.create(tmp_path)
    with pytest.raises(ValueError, match="invalid event type"):
        writer.append('bad"type', {})
    with pytest.raises(UsageError, match="seal status"):
        writer.seal(key, exit_code=0, status="fine")


def test_unserialisable_data_writes_nothing(tmp_path: Path, key: SigningKey) -> None:
    writer = SessionWriter.create(tmp_path)
    with pytest.raises(ValueError, match="JSON compliant"):
        writer.append("output", {"x": float("nan")})
    assert writer.seq == 0 and not writer.broken
    assert writer.append("output", {"x": 1.5}) == 0


def test_lone_surrogates_are_recorded_and_read_back(
    tmp_path: Path, key: SigningKey, trusted: Trusted
) -> None:
    text = b"caf\xff".decode("utf-8", "surrogateescape")
    writer = SessionWriter.create(tmp_path)
    writer.append("output", {"text": text})
    writer.seal(key, exit_code=0)
    assert next(iter_events(writer.path))["data"]["text"] == text
    assert verify_session(writer.path, trusted).event_count == 1


def test_concurrent_appends_form_one_chain(
    tmp_path: Path, key: SigningKey, trusted: Trusted
) -> None:
    writer = SessionWriter.create(tmp_path)
    seqs: list[int] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        for i in range(150):
            seq = writer.append("output", {"thread": n, "i": i, "pad": "x" * (i % 50)})
            with lock:
                seqs.append(seq)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.seal(key, exit_code=0)
    assert sorted(seqs) == list(range(1200))
    assert verify_session(writer.path, trusted).event_count == 1200


def test_iter_events_reads_what_was_written(tmp_path: Path) -> None:
    writer = SessionWriter.create(tmp_path)
    writer.append("a.b", {"n": 1})
    writer.append("c", {"n": 2})
    writer.close()
    events = list(iter_events(writer.path))
    assert [(e["seq"], e["type"], e["data"]) for e in events] == [
        (0, "a.b", {"n": 1}),
        (1, "c", {"n": 2}),
    ]
    assert list(iter_events(writer.path / "events.jsonl")) == events


def test_iter_events_names_a_malformed_line(tmp_path: Path) -> None:
    writer = SessionWriter.create(tmp_path)
    writer.append("a", {})
    writer.close()
    with (writer.path / "events.jsonl").open("ab") as handle:
        handle.write(b"[1, 2]\n")
    with pytest.raises(VerificationFailed) as info:
        list(iter_events(writer.path))
    assert (info.value.kind, info.value.line) == ("malformed", 2)


def test_iter_events_on_a_missing_session(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read session log"):
        list(iter_events(tmp_path / "nope"))
