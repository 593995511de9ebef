"""The file backend end to end: request files, decisions by `decide`, binding, first one wins."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import pytest
from tests.gate.conftest import Recorder

from airlock.audit import SigningKey
from airlock.gate import EXPIRED, FileBackend, GateError, Operation, ask, decide, pending


def _wait_for_request(directory: Path, timeout: float = 5) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(pending(directory))
        if found:
            return str(found[0]["request_id"])
        time.sleep(0.01)
    raise AssertionError("no request appeared")


def test_request_file_describes_the_operation(
    tmp_path: Path, key: SigningKey, op: Operation
) -> None:
    backend = FileBackend(tmp_path, key=key)
    rid = backend.request(op, timeout=60)
    data = json.loads((tmp_path / "requests" / f"{rid}.json").read_text())
    assert data["operation"] == op.to_dict()
    assert data["operation_hash"] == op.operation_hash()
    assert data["expires_at"].endswith("Z")
    assert [p["request_id"] for p in pending(tmp_path)] == [rid]
    assert (tmp_path / "requests").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("approved", [True, False])
def test_decide_from_another_thread_ends_the_wait(
    tmp_path: Path, key: SigningKey, recorder: Recorder, op: Operation, approved: bool
) -> None:
    backend = FileBackend(tmp_path, key=key, record=recorder)
    backend.poll_interval = 0.02

    def decider() -> None:
        rid = _wait_for_request(tmp_path)
        decide(tmp_path, rid, approved=approved, by="alice", reason="checked")

    thread = threading.Thread(target=decider)
    thread.start()
    decision = asyncio.run(ask(backend, op, 10))
    thread.join()
    assert decision.approved is approved
    assert decision.by == "alice" and decision.reason == "checked"
    assert decision.verify(key.public_key, op.operation_hash())
    assert recorder.types() == ["approval.requested", "approval.decided"]
    assert list(pending(tmp_path)) == []


def test_decision_file_for_another_hash_is_denied(
    tmp_path: Path, key: SigningKey, op: Operation
) -> None:
    backend = FileBackend(tmp_path, key=key)
    rid = backend.request(op)
    forged = {"approved": True, "by": "mallory", "operation_hash": "f" * 64}
    (tmp_path / "decisions" / f"{rid}.json").write_text(json.dumps(forged))
    decision = backend.status(rid)
    assert decision is not None and not decision.approved
    assert "another operation" in decision.reason


def test_request_file_edited_after_the_fact_cannot_be_decided(
    tmp_path: Path, key: SigningKey, op: Operation
) -> None:
    backend = FileBackend(tmp_path, key=key)
    rid = backend.request(op)
    path = tmp_path / "requests" / f"{rid}.json"
    data = json.loads(path.read_text())
    data["operation"]["text"] = "SELECT 1"  # shown text no longer matches the bound hash
    path.write_text(json.dumps(data))
    with pytest.raises(GateError, match="does not match its operation hash"):
        decide(tmp_path, rid, approved=True, by="alice")
    assert backend.status(rid) is None


@pytest.mark.parametrize(
    "content", ["not json", "[]", '{"approved": "yes", "by": "a", "operation_hash": "x"}', "{}"]
)
def test_malformed_decision_file_is_a_denial(
    tmp_path: Path, key: SigningKey, op: Operation, content: str
) -> None:
    backend = FileBackend(tmp_path, key=key)
    rid = backend.request(op)
    (tmp_path / "decisions" / f"{rid}.json").write_text(content)
    decision = backend.status(rid)
    assert decision is not None and not decision.approved
    assert "malformed" in decision.reason


def test_first_decision_wins_and_second_is_an_error(
    tmp_path: Path, key: SigningKey, op: Operation
) -> None:
    backend = FileBackend(tmp_path, key=key)
    rid = backend.request(op)
    decide(tmp_path, rid, approved=False, by="bob")
    with pytest.raises(GateError, match="already decided"):
        decide(tmp_path, rid, approved=True, by="alice")
    decision = backend.status(rid)
    assert decision is not None and not decision.approved and decision.by == "bob"


def test_racing_deciders_produce_exactly_one_decision(
    tmp_path: Path, key: SigningKey, op: Operation
) -> None:
    backend = FileBackend(tmp_path, key=key)
    rid = backend.request(op)
    wins: list[bool] = []

    def click(approved: bool) -> None:
        try:
            decide(tmp_path, rid, approved=approved, by=f"u{approved}")
            wins.append(approved)
        except GateError:
            pass

    threads = [threading.Thread(target=click, args=(i % 2 == 0,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    decision = backend.status(rid)
    assert decision is not None and decision.approved is wins[0]


@pytest.mark.parametrize("bad", ["../../etc/passwd", "ABC", "0" * 31, "g" * 32])
def test_decide_refuses_ids_that_are_not_request_ids(tmp_path: Path, bad: str) -> None:
    with pytest.raises(GateError, match="32 lowercase hex"):
        decide(tmp_path, bad, approved=True, by="alice")


def test_decide_unknown_request(tmp_path: Path, key: SigningKey) -> None:
    FileBackend(tmp_path, key=key)
    with pytest.raises(GateError, match="no approval request"):
        decide(tmp_path, "a" * 32, approved=True, by="alice")


def test_expiry_with_file_backend(tmp_path: Path, key: SigningKey, op: Operation) -> None:
    backend = FileBackend(tmp_path, key=key)
    backend.poll_interval = 0.02
    decision = asyncio.run(ask(backend, op, 0.2))
    assert decision.reason == EXPIRED and not decision.approved


def test_unwritable_directory_is_a_gate_error(tmp_path: Path, key: SigningKey) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(GateError, match="could not create"):
        FileBackend(blocker / "sub", key=key)


def test_decision_with_a_non_ascii_hash_is_denied_not_a_crash(
    tmp_path: Path, key: SigningKey, op: Operation
) -> None:
    backend = FileBackend(tmp_path, key=key)
    rid = backend.request(op)
    forged = {"approved": True, "by": "m", "operation_hash": "\u00e9" * 64}
    (tmp_path / "decisions" / f"{rid}.json").write_text(json.dumps(forged))
    decision = backend.status(rid)
    assert decision is not None and not decision.approved
