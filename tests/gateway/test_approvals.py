"""The hold helper all gateways share: the first thing to happen wins, once, and the approval
backend records exactly one outcome per request (a real Approver over the file backend)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from airlock.audit import SigningKey
from airlock.gate import Operation, approver
from airlock.gate.file import FileBackend, decide, pending
from airlock.gateway.approvals import NO_APPROVER, Approvals, tool_operation
from airlock.mask import Masker, MaskSettings

OP = Operation(kind="http", text="DELETE /items/1", rule_id="hold", gateway="api")


class Events:
    def __init__(self) -> None:
        self.types: list[str] = []

    def __call__(self, kind: str, data: Mapping[str, Any]) -> None:
        self.types.append(kind)

    def outcomes(self) -> list[str]:
        return [t for t in self.types if t != "approval.requested"]


def _approvals(tmp_path: Path, timeout: float = 20) -> tuple[Approvals, Events]:
    events = Events()
    backend = FileBackend(tmp_path, key=SigningKey.generate(), record=events)
    backend.poll_interval = 0.01
    return Approvals(approver(backend, timeout)), events


async def _requested(tmp_path: Path) -> str:
    while not (found := list(pending(tmp_path))):
        await asyncio.sleep(0.01)
    return str(found[0]["request_id"])


def test_an_answer_is_the_outcome(tmp_path: Path) -> None:
    async def main() -> None:
        approvals, events = _approvals(tmp_path)
        asking = asyncio.create_task(approvals.ask(OP))
        decide(tmp_path, await _requested(tmp_path), approved=True, by="alice")
        assert (await asking).approved
        assert events.outcomes() == ["approval.decided"]

    asyncio.run(main())


def test_the_client_leaving_cancels_the_request_once(tmp_path: Path) -> None:
    async def main() -> None:
        approvals, events = _approvals(tmp_path)
        left = asyncio.Event()
        asking = asyncio.create_task(approvals.ask(OP, gone=left.wait))
        request_id = await _requested(tmp_path)
        left.set()
        asked = await asking
        assert asked.outcome == "gone" and not asked.approved
        decide(tmp_path, request_id, approved=True, by="late")  # too late: nothing changes
        await asyncio.sleep(0.05)
        assert events.outcomes() == ["approval.cancelled"]

    asyncio.run(main())


def test_cancel_all_ends_every_hold_with_one_cancelled_event_each(tmp_path: Path) -> None:
    async def main() -> None:
        approvals, events = _approvals(tmp_path)
        asks = [asyncio.create_task(approvals.ask(OP)) for _ in range(3)]
        while len(list(pending(tmp_path))) < 3:
            await asyncio.sleep(0.01)
        assert approvals.cancel_all() == 3
        assert [a.outcome for a in await asyncio.gather(*asks)] == ["ended"] * 3
        assert events.outcomes() == ["approval.cancelled"] * 3
        assert approvals.cancel_all() == 0

    asyncio.run(main())


def test_an_unanswered_request_expires(tmp_path: Path) -> None:
    approvals, events = _approvals(tmp_path, timeout=0.1)
    asked = asyncio.run(approvals.ask(OP))
    assert asked.outcome == "expired" and events.outcomes() == ["approval.expired"]


@pytest.mark.parametrize("approve", [None, "broken"])
def test_no_approver_or_a_broken_one_denies(approve: str | None) -> None:
    async def broken(op: Operation) -> bool:
        raise RuntimeError("backend down")

    approvals = Approvals(broken if approve else None)
    asked = asyncio.run(approvals.ask(OP))
    assert asked.outcome == "denied"
    assert asked.why == ("approval failed: RuntimeError" if approve else NO_APPROVER)


def test_a_tool_operation_is_masked_and_cut() -> None:
    masker = Masker(MaskSettings(literals=(("k", "sk-secret-value-123"),), builtin=False))
    op = tool_operation(
        masker, "Bash", {"cmd": "echo sk-secret-value-123" + "x" * 5000},
        rule_id="r", gateway="g", session_id="s",
    )  # fmt: skip
    assert "sk-secret-value-123" not in op.text and len(op.text) == 4000
    assert op.text.startswith('Bash {"cmd": "echo ') and op.kind == "tool"
