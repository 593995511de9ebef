"""The ``deny`` backend: every request is denied at once, with a reason. The safe default."""

from __future__ import annotations

from airlock.audit.keys import SigningKey
from airlock.gate.interface import Answer, ApprovalBackend, ApprovalRequest, Record

__all__ = ["DenyBackend"]

_DEFAULT_REASON = "no approval backend is configured (approvals.backend: deny)"


class DenyBackend(ApprovalBackend):
    """Denies everything; ``reason`` says why (shown in the refusal and the event)."""

    name = "deny"

    def __init__(
        self, *, key: SigningKey, record: Record | None = None, reason: str = _DEFAULT_REASON
    ) -> None:
        super().__init__(key=key, record=record)
        self._reason = reason

    def _submit(self, req: ApprovalRequest) -> None:
        return None

    def _fetch(self, req: ApprovalRequest) -> Answer | None:
        return Answer(
            approved=False, by="airlock", operation_hash=req.operation_hash, reason=self._reason
        )
