"""Holding an operation for approval, the same way in every gateway (HTTP, model API, MCP).

    approvals = Approvals(approve)
    asked = await approvals.ask(op, gone=client_left)     # Asked(outcome, why)
    approvals.cancel_all()                                # the session is ending

While the approver is asked, ``gone()`` (an awaitable that finishes when the client leaves) is
watched. The first thing to happen wins, once:

    approved | denied | expired    the approver answered (a failing approval path denies; no
                                   approver configured denies, saying so)
    gone                           the client left first, even as the answer came: the request at
                                   the backend is cancelled (``approval.cancelled``) and the
                                   operation must never run
    ended                          :meth:`Approvals.cancel_all` (the session ends): cancelled too

The approver (:class:`airlock.gate.Approver`) records ``approval.requested`` and exactly one of
``approval.decided``/``expired``/``cancelled`` per request; the caller consumes an approval once
(the HTTP gateway's :class:`~airlock.gateway.http.hold.Hold` binds it to one request).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from airlock.gate.interface import EXPIRED as GATE_EXPIRED
from airlock.gate.interface import Decider, Operation
from airlock.mask import Masker

__all__ = [
    "CLIENT_GONE",
    "NO_APPROVER",
    "SESSION_ENDED",
    "Approvals",
    "Approve",
    "Asked",
    "Outcome",
    "tool_operation",
]

Approve = Callable[[Operation], Awaitable[bool]]
Outcome = Literal["approved", "denied", "expired", "gone", "ended"]
CLIENT_GONE = "client disconnected"
SESSION_ENDED = "session ended"
NO_APPROVER = "no approval backend is configured"
_STOPPED = "gateway stopped"
_TOOL_TEXT = 4000


@dataclass(frozen=True)
class Asked:
    """What came of asking: the outcome and, when it is not plain, why."""

    outcome: Outcome
    why: str = ""

    @property
    def approved(self) -> bool:
        return self.outcome == "approved"


def tool_operation(
    masker: Masker,
    tool: str,
    arguments: Any,
    *,
    rule_id: str,
    gateway: str,
    session_id: str,
) -> Operation:
    """The operation shown to approvers for a tool call: its name and arguments, masked."""
    shown = json.dumps(arguments, sort_keys=True, ensure_ascii=False)
    return Operation(
        kind="tool",
        text=masker.mask_text(f"{tool} {shown}")[:_TOOL_TEXT],
        rule_id=rule_id,
        gateway=gateway,
        session_id=session_id,
    )


class Approvals:
    """The approvals one gateway has in flight (see the module doc)."""

    def __init__(self, approve: Approve | None) -> None:
        self._approve = approve
        self._pending: set[asyncio.Future[Asked]] = set()

    async def ask(
        self, op: Operation, *, gone: Callable[[], Awaitable[object]] | None = None
    ) -> Asked:
        """Ask about ``op`` while watching ``gone()``; the first thing to happen (module doc)."""
        if self._approve is None:
            return Asked("denied", NO_APPROVER)
        asking = asyncio.ensure_future(self._decide(self._approve, op))
        watch = asyncio.ensure_future(gone()) if gone is not None else None
        self._pending.add(asking)
        try:
            waited = {asking} if watch is None else {asking, watch}
            await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the request's own task is cancelled: stop asking
            asking.cancel(_STOPPED)
            raise
        finally:
            self._pending.discard(asking)
            left = watch is not None and watch.done() and not watch.cancelled()
            if watch is not None:
                watch.cancel()
        if asking.cancelled():
            return Asked("ended", SESSION_ENDED)
        if left:  # the client left (even as the answer came): the operation never runs
            if not asking.done():
                asking.cancel(CLIENT_GONE)
                await asyncio.wait({asking})
            return Asked("gone", CLIENT_GONE)
        return asking.result()

    def cancel_all(self, reason: str = SESSION_ENDED) -> int:
        """Cancel every approval in flight (each caller gets ``ended``); how many."""
        pending = list(self._pending)
        for future in pending:
            future.cancel(reason)
        return len(pending)

    @staticmethod
    async def _decide(approve: Approve, op: Operation) -> Asked:
        """A broken approval path denies: it never lets an operation through."""
        try:
            decider: object = approve
            if isinstance(decider, Decider):  # an Approver also says why
                verdict = await decider.decide(op)
                if verdict.approved:
                    return Asked("approved")
                expired = verdict.reason == GATE_EXPIRED
                return Asked("expired" if expired else "denied", verdict.reason)
            return Asked("approved" if await approve(op) else "denied")
        except Exception as exc:
            return Asked("denied", f"approval failed: {type(exc).__name__}")
