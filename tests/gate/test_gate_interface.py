"""The gate interface: operation hash binding, signed decisions, expiry, events, deny backend."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.gate.conftest import Recorder

import airlock.gate
from airlock.audit import SigningKey
from airlock.errors import ExitCode
from airlock.gate import (
    EXPIRED,
    Answer,
    ApprovalBackend,
    ApprovalRequest,
    Decision,
    DenyBackend,
    GateError,
    Operation,
    ask,
)


class ScriptedBackend(ApprovalBackend):
    """A backend whose answer is set by the test: the smallest real subclass."""

    name = "scripted"
    poll_interval = 0.01

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.answer: Answer | None = None
        self.submitted: list[ApprovalRequest] = []

    def _submit(self, req: ApprovalRequest) -> None:
        self.submitted.append(req)

    def _fetch(self, req: ApprovalRequest) -> Answer | None:
        return self.answer


def test_public_api_is_pinned() -> None:
    assert set(airlock.gate.__all__) == {
        "CANCELLED",
        "EXPIRED",
        "Answer",
        "Approve",
        "Approver",
        "Decider",
        "ApprovalBackend",
        "ApprovalRequest",
        "ConsoleBackend",
        "Decision",
        "DenyBackend",
        "FileBackend",
        "GateError",
        "Operation",
        "OperationKind",
        "Record",
        "approver",
        "ask",
        "decide",
        "pending",
    }


def test_gate_error_fails_closed() -> None:
    assert GateError("x").exit_code is ExitCode.UNAVAILABLE


def test_operation_hash_is_sha256_of_canonical_json(op: Operation) -> None:
    canonical = json.dumps(op.to_dict(), sort_keys=True, separators=(",", ":")).encode()
    assert op.operation_hash() == hashlib.sha256(canonical).hexdigest()
    assert set(op.to_dict()) == {
        "kind",
        "text",
        "rule_id",
        "gateway",
        "repository",
        "commit",
        "run_id",
        "session_id",
    }


@pytest.mark.parametrize(
    "field", ["kind", "text", "rule_id", "gateway", "repository", "commit", "run_id", "session_id"]
)
def test_every_field_is_bound_into_the_hash(op: Operation, field: str) -> None:
    other = "http" if field == "kind" else "something else"
    changed = dataclasses.replace(op, **{field: other})
    assert changed.operation_hash() != op.operation_hash()


@settings(max_examples=200)
@given(st.text(), st.text())
def test_distinct_texts_hash_differently(a: str, b: str) -> None:
    first = Operation(kind="command", text=a, rule_id="r")
    second = Operation(kind="command", text=b, rule_id="r")
    assert (first.operation_hash() == second.operation_hash()) == (a == b)


def test_decision_signature_binds_hash_verdict_by_and_time(key: SigningKey, op: Operation) -> None:
    decision = Decision.signed(key, op.operation_hash(), approved=True, by="alice")
    assert decision.verify(key.public_key, op.operation_hash())
    assert decision.key_id == key.key_id
    other = Operation(kind="sql", text="DROP TABLE orders", rule_id="no-drop")
    assert not decision.verify(key.public_key, other.operation_hash())
    for tampered in (
        dataclasses.replace(decision, approved=False),
        dataclasses.replace(decision, by="mallory"),
        dataclasses.replace(decision, at="2000-01-01T00:00:00.000000Z"),
        dataclasses.replace(decision, signature=""),
        dataclasses.replace(decision, signature="not base64!"),
    ):
        assert not tampered.verify(key.public_key, op.operation_hash())
    assert not decision.verify(SigningKey.generate().public_key, op.operation_hash())


def test_signature_never_in_repr(key: SigningKey, op: Operation) -> None:
    decision = Decision.signed(key, op.operation_hash(), approved=True, by="alice")
    assert decision.signature not in repr(decision)


def test_approved_answer_is_signed_and_recorded(
    key: SigningKey, recorder: Recorder, op: Operation
) -> None:
    backend = ScriptedBackend(key=key, record=recorder)
    rid = backend.request(op, timeout=5)
    assert backend.status(rid) is None
    backend.answer = Answer(True, "alice", op.operation_hash())
    decision = asyncio.run(backend.wait(rid, 5))
    assert decision.approved and decision.by == "alice"
    assert decision.verify(key.public_key, op.operation_hash())
    assert recorder.types() == ["approval.requested", "approval.decided"]
    requested, decided = (data for _, data in recorder.events)
    assert requested["operation_hash"] == op.operation_hash()
    assert requested["operation"]["text"] == "DROP TABLE users"
    assert requested["backend"] == "scripted"
    assert decided["request_id"] == rid and decided["approved"] is True
    assert decided["signature"] == decision.signature


def test_decision_for_another_operation_hash_is_refused(
    key: SigningKey, recorder: Recorder, op: Operation
) -> None:
    backend = ScriptedBackend(key=key, record=recorder)
    rid = backend.request(op)
    elsewhere = Operation(kind="sql", text="SELECT 1", rule_id="no-drop").operation_hash()
    backend.answer = Answer(True, "alice", elsewhere)
    decision = backend.status(rid)
    assert decision is not None
    assert decision.approved is False
    assert "another operation" in decision.reason
    assert decision.operation_hash == op.operation_hash()
    assert recorder.events[-1][1]["approved"] is False


def test_first_decision_sticks(key: SigningKey, op: Operation) -> None:
    backend = ScriptedBackend(key=key)
    rid = backend.request(op)
    backend.answer = Answer(False, "bob", op.operation_hash(), "no")
    first = backend.status(rid)
    backend.answer = Answer(True, "alice", op.operation_hash())
    assert backend.status(rid) == first
    assert first is not None and not first.approved


def test_unanswered_request_expires_to_denied(
    key: SigningKey, recorder: Recorder, op: Operation
) -> None:
    backend = ScriptedBackend(key=key, record=recorder)
    started = time.monotonic()
    decision = asyncio.run(ask(backend, op, 0.2))
    assert 0.15 <= time.monotonic() - started < 5  # waited for the timeout, then expired
    assert decision.approved is False and decision.reason == EXPIRED
    assert decision.verify(key.public_key, op.operation_hash())
    assert recorder.types() == ["approval.requested", "approval.expired"]
    # a late answer does not revive an expired request
    backend.answer = Answer(True, "alice", op.operation_hash())
    assert backend.status(backend.submitted[0].request_id) == decision


def test_status_after_expiry_is_denied_without_waiting(key: SigningKey, op: Operation) -> None:
    backend = ScriptedBackend(key=key)
    rid = backend.request(op, timeout=0.05)
    time.sleep(0.1)
    backend.answer = Answer(True, "alice", op.operation_hash())
    decision = backend.status(rid)
    assert decision is not None and decision.reason == EXPIRED and not decision.approved


def test_unknown_request_id_is_a_gate_error(key: SigningKey) -> None:
    backend = ScriptedBackend(key=key)
    with pytest.raises(GateError, match="unknown approval request"):
        backend.status("0" * 32)


def test_deny_backend_denies_at_once_with_reason(
    key: SigningKey, recorder: Recorder, op: Operation
) -> None:
    backend = DenyBackend(key=key, record=recorder, reason="approvals are off here")
    started = time.monotonic()
    decision = asyncio.run(ask(backend, op, 30))
    assert time.monotonic() - started < 10  # at once, not after the 30 s timeout
    assert not decision.approved and decision.reason == "approvals are off here"
    assert decision.verify(key.public_key, op.operation_hash())
    assert recorder.types() == ["approval.requested", "approval.decided"]


def test_concurrent_requests_are_independent(key: SigningKey) -> None:
    backend = ScriptedBackend(key=key)
    ops = [Operation(kind="http", text=f"DELETE /x/{i}", rule_id="r") for i in range(5)]

    async def main() -> list[Decision]:
        return await asyncio.gather(*(ask(backend, o, 0.1) for o in ops))

    decisions = asyncio.run(main())
    assert len({d.operation_hash for d in decisions}) == 5
    assert all(d.reason == EXPIRED for d in decisions)


def test_approver_binds_session_context_into_the_hash(key: SigningKey, recorder: Recorder) -> None:
    backend = ScriptedBackend(key=key, record=recorder)
    approve = airlock.gate.approver(
        backend, 5, repository="acme/api", commit="c" * 40, run_id="7", session_id="s-9"
    )
    bare = Operation(kind="http", text="DELETE /api/v1/namespaces/prod", rule_id="no-ns")
    bound = dataclasses.replace(
        bare, repository="acme/api", commit="c" * 40, run_id="7", session_id="s-9"
    )
    backend.answer = Answer(True, "alice", bound.operation_hash())
    assert asyncio.run(approve(bare)) is True
    requested = recorder.events[0][1]
    assert requested["operation"]["repository"] == "acme/api"
    assert requested["operation_hash"] == bound.operation_hash() != bare.operation_hash()


def test_approver_denies_when_the_answer_is_for_the_unbound_operation(key: SigningKey) -> None:
    backend = ScriptedBackend(key=key)
    approve = airlock.gate.approver(backend, 5, repository="acme/api", session_id="s-9")
    bare = Operation(kind="http", text="DELETE /x", rule_id="r")
    backend.answer = Answer(True, "alice", bare.operation_hash())
    assert asyncio.run(approve(bare)) is False


def test_approver_treats_backend_failure_as_denial(key: SigningKey) -> None:
    class Broken(ScriptedBackend):
        def _submit(self, req: ApprovalRequest) -> None:
            raise GateError("backend down")

    approve = airlock.gate.approver(Broken(key=key), 5)
    assert asyncio.run(approve(Operation(kind="sql", text="DROP TABLE t", rule_id="r"))) is False


def test_approver_decide_tells_an_expiry_from_a_denial(key: SigningKey) -> None:
    backend = ScriptedBackend(key=key)
    approve = airlock.gate.approver(backend, 0.05)
    assert isinstance(approve, airlock.gate.Decider)
    decision = asyncio.run(approve.decide(Operation(kind="http", text="DELETE /x", rule_id="r")))
    assert decision.approved is False and decision.reason == EXPIRED


def test_cancelling_a_pending_approval_records_approval_cancelled(
    key: SigningKey, recorder: Recorder
) -> None:
    backend = ScriptedBackend(key=key, record=recorder)
    approve = airlock.gate.approver(backend, 30)

    async def scenario() -> None:
        task = asyncio.ensure_future(
            approve(Operation(kind="sql", text="DROP TABLE t", rule_id="r"))
        )
        while not backend.submitted:
            await asyncio.sleep(0.01)
        task.cancel("client disconnected")
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert recorder.types() == ["approval.requested", "approval.cancelled"]
    cancelled = recorder.events[-1][1]
    assert (
        cancelled["approved"] is False and cancelled["reason"] == "cancelled: client disconnected"
    )
    request_id = backend.submitted[0].request_id
    backend.answer = Answer(True, "alice", backend.submitted[0].operation_hash)
    assert backend.status(request_id).approved is False  # a late approval changes nothing
