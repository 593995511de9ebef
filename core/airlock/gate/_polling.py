"""What the broker-less forge backends (GitHub comments, GitLab notes) share: they post the
request where reviewers work, poll for answers with the job's own token, and let the first
entitled answer decide — so rules that need several votes or a justification the forge cannot
carry are refused at construction."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from airlock.audit.keys import SigningKey
from airlock.errors import ConfigError
from airlock.gate.interface import Answer, ApprovalBackend, ApprovalRequest, Record
from airlock.gate.rules import ApproverRules, Clicker, Rights, refusal

__all__ = ["PollingForgeBackend"]

log = logging.getLogger("airlock.gate")


class PollingForgeBackend(ApprovalBackend):
    """Base of the backends that read answers from PR comments or MR notes."""

    poll_interval: float = 5.0

    def __init__(
        self,
        *,
        key: SigningKey,
        record: Record | None,
        requester: str | None,
        requester_id: str | None,
        approvers: ApproverRules | None,
        unsupported: Callable[[ApproverRules], str | None],
    ) -> None:
        super().__init__(key=key, record=record)
        self._requester = requester  # the login, for humans to read
        self._requester_id = requester_id  # the immutable id: what self-approval compares
        self._rules = approvers or ApproverRules()
        self._author_id: str | None = None  # the PR/MR author's id, read when posting
        problem = unsupported(self._rules)
        if problem is not None:
            raise ConfigError(
                f"{self.name} decides on the first eligible answer: {problem} needs the broker",
                hint="use the broker-backed backend (github-check, gitlab), or drop that rule",
            )

    def _first_answer(
        self,
        req: ApprovalRequest,
        items: Iterable[Any],
        judge: Callable[[ApprovalRequest, Any], Answer | None],
    ) -> Answer | None:
        for item in items:
            answer = judge(req, item)
            if answer is not None:
                return answer
        return None

    def _entitled(
        self, req: ApprovalRequest, clicker: Clicker, *, approve: bool, rights: Rights
    ) -> bool:
        """Whether this answer may decide; a refusal is logged, never raised."""
        why = refusal(
            [self._rules],
            clicker,
            approve=approve,
            requester_id=self._requester_id,
            author_id=self._author_id,
            rights=rights,
        )
        if why is not None:
            log.info("approval %s: answer by %s refused: %s", req.request_id, clicker.login, why)
        return why is None
