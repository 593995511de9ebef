"""Judging answers: who may decide (checked at click time), the quorum of distinct ids, and the
signed decision. One :class:`Decider` per broker process; the store makes every step atomic
across replicas."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.responses import JSONResponse

from airlock.audit.keys import SigningKey
from airlock.broker.approvals.forges import ForgeDispatch, shown
from airlock.broker.approvals.store import (
    PENDING,
    ApprovalRow,
    ApprovalStore,
    Replayed,
    Tally,
    Vote,
)
from airlock.gate.forges import Click, Forge
from airlock.gate.interface import Decision
from airlock.gate.rules import (
    MAX_JUSTIFICATION,
    ApproverRules,
    Clicker,
    justification_required,
    refusal,
    required_approvals,
)
from airlock.mask import Masker, MaskSettings

__all__ = ["Decider", "WebhookResult"]

log = logging.getLogger("airlock.broker.approvals")

_JUSTIFY = "a justification is required"


@dataclass(frozen=True)
class WebhookResult:
    """What a webhook delivery did; ``status`` is the HTTP status to answer with."""

    result: str
    status: int = 200
    reason: str = ""
    request_id: str | None = None

    def response(self) -> JSONResponse:
        body = {"result": self.result}
        if self.reason:
            body["reason"] = self.reason
        if self.request_id:
            body["request_id"] = self.request_id
        return JSONResponse(body, status_code=self.status)


class Decider:
    """Apply clicks, expiries and revokes to requests; sign every outcome."""

    def __init__(
        self,
        key: SigningKey,
        store: ApprovalStore,
        forges: ForgeDispatch,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = key
        self.store = store
        self._forges = forges
        self._clock = clock
        self._masker: Masker | None = None
        self.version = 0  # bumped on every local decision: wakes long-polls early

    # -- outcomes without a click -----------------------------------------------------------------

    def expire_if_due(self, row: ApprovalRow) -> ApprovalRow:
        """The row, expired to a signed denial first when its time is up."""
        if row.status != PENDING or self._clock() < row.expires_at:
            return row
        decision = self.sign(row, approved=False, by="airlock", reason="expired")
        if self.store.decide(row.request_id, "expired", decision, []):
            log.info("approval %s expired: denied", row.request_id)
            self._forges.show_outcome(row, "expired", decision)
            self.version += 1
        return self.store.get(row.request_id) or row

    def job_revoked(self, job_digest: str) -> None:
        """Deny every pending request of a revoked job (a click after this changes nothing)."""
        for row in self.store.pending_of_job(job_digest):
            decision = self.sign(row, approved=False, by="airlock", reason="job revoked")
            if self.store.decide(row.request_id, "denied", decision, []):
                log.info("approval %s denied: its job was revoked", row.request_id)
                self._forges.show_outcome(row, "denied", decision)
        self.version += 1

    def close_unposted(self, row: ApprovalRow) -> None:
        decision = self.sign(row, approved=False, by="airlock", reason="could not be posted")
        self.store.decide(row.request_id, "denied", decision, [])

    # -- a click ----------------------------------------------------------------------------------

    def click(
        self, row: ApprovalRow, click: Click, forge: Forge, author_id: str | None
    ) -> WebhookResult:
        """Judge ``click`` on ``row`` (already matched to it) and apply it."""
        deliveries = list(click.deliveries)
        row = self.expire_if_due(row)
        if row.status != PENDING:
            result = "expired" if row.status == "expired" else "already-decided"
            return self.consume(deliveries, WebhookResult(result, 200, request_id=row.request_id))
        click = dataclasses.replace(click, justification=self._masked(click.justification))
        rules = row.approver_rules()
        why = refusal(
            rules,
            click.clicker,
            approve=click.approve,
            requester_id=row.requester_id,
            author_id=author_id,
            rights=forge.rights(shown(row)),
        )
        if why is None and click.approve and justification_required(rules):
            why = _missing_justification(row, click, forge)
        if why is not None:
            return self.refuse(row, deliveries, why, click.clicker)
        by = f"{forge.source}:{click.clicker.login}"  # for humans; the id is what counts
        by_id = f"{forge.source}:{click.clicker.user_id}"
        if not click.approve:
            return self._deny(row, (by, by_id), click)
        self._drop_stale_votes(row, rules, forge, author_id, by_id)
        try:
            tally = self.store.vote(
                row.request_id,
                Vote(by_id, by, click.justification),
                required_approvals(rules),
                lambda votes: self._sign_approval(row, votes, click.where),
                deliveries,
            )
        except Replayed:
            return _replayed()
        return self._after_vote(row, tally, by, required_approvals(rules))

    def refuse(
        self,
        row: ApprovalRow,
        deliveries: list[tuple[str, str]],
        why: str,
        clicker: Clicker | None = None,
    ) -> WebhookResult:
        log.info("approval %s: click refused: %s", row.request_id, why)
        result = self.consume(deliveries, WebhookResult("refused", 200, why, row.request_id))
        if clicker is not None and result.result == "refused" and _JUSTIFY in why:
            self._forges.reply(row, f"@{clicker.login} {why}")
        return result

    def consume(self, deliveries: list[tuple[str, str]], result: WebhookResult) -> WebhookResult:
        try:
            self.store.consume(deliveries)
        except Replayed:
            return _replayed()
        return result

    def _drop_stale_votes(
        self,
        row: ApprovalRow,
        rules: list[ApproverRules],
        forge: Forge,
        author_id: str | None,
        voter: str,
    ) -> None:
        """Before a vote that may settle the request, ask again whether each earlier approver
        may still approve (rights are checked at click time: theirs may have been removed
        since); drop the votes of those who may not."""
        votes = [v for v in self.store.votes(row.request_id) if v.approver_id != voter]
        if len(votes) + 1 < required_approvals(rules):
            return
        rights = forge.rights(shown(row))
        for vote in votes:
            clicker = Clicker(vote.by.partition(":")[2], vote.approver_id.partition(":")[2])
            why = refusal(
                rules,
                clicker,
                approve=True,
                requester_id=row.requester_id,
                author_id=author_id,
                rights=rights,
            )
            if why is not None:
                log.info("approval %s: earlier vote dropped: %s", row.request_id, why)
                self.store.drop_vote(row.request_id, vote.approver_id)

    def _deny(self, row: ApprovalRow, who: tuple[str, str], click: Click) -> WebhookResult:
        by, by_id = who
        said = click.justification
        reason = f"denied in {click.where}" + (f": {said}" if said else "")
        decision = self.sign(
            row, approved=False, by=by, reason=reason, justification=said, by_ids=(by_id,)
        )
        try:
            won = self.store.decide(row.request_id, "denied", decision, list(click.deliveries))
        except Replayed:
            return _replayed()
        if not won:
            return WebhookResult("already-decided", 200, request_id=row.request_id)
        log.info("approval %s denied by %s", row.request_id, by)
        self.version += 1
        self._forges.show_outcome(row, "denied", decision)
        return WebhookResult("denied", 200, request_id=row.request_id)

    def _after_vote(self, row: ApprovalRow, tally: Tally, by: str, needed: int) -> WebhookResult:
        if tally.status == "already-decided":
            return WebhookResult("already-decided", 200, request_id=row.request_id)
        if tally.status == "revoked":
            why = "the job that asked was revoked"
            log.info("approval %s: click refused: %s", row.request_id, why)
            return WebhookResult("refused", 200, why, row.request_id)
        if tally.decision is not None:
            log.info(
                "approval %s approved by %s (ids %s)%s",
                row.request_id,
                tally.decision.by,
                ",".join(tally.decision.by_ids),
                " with a justification" if tally.decision.justification else "",
            )
            self.version += 1
            self._forges.show_outcome(row, "approved", tally.decision)
            return WebhookResult("approved", 200, request_id=row.request_id)
        count = f"{len(tally.votes)} of {needed} approvals"
        if not tally.counted:
            return WebhookResult("pending", 200, f"{by} already approved; {count}", row.request_id)
        log.info("approval %s: %s (%s)", row.request_id, count, by)
        self._forges.show_progress(row, [v.by for v in tally.votes], needed)
        return WebhookResult("pending", 200, count, row.request_id)

    # -- signing ----------------------------------------------------------------------------------

    def _sign_approval(self, row: ApprovalRow, votes: tuple[Vote, ...], where: str) -> Decision:
        ordered = sorted(votes, key=lambda v: (v.by.lower(), v.approver_id))
        by = ",".join(v.by for v in ordered)
        said = "; ".join(f"{v.by}: {v.justification}" for v in ordered if v.justification)
        reason = f"approved in {where}" + (f" ({said})" if said else "")
        return self.sign(
            row,
            approved=True,
            by=by,
            reason=reason,
            justification=said,
            by_ids=tuple(v.approver_id for v in ordered),
        )

    def sign(
        self,
        row: ApprovalRow,
        *,
        approved: bool,
        by: str,
        reason: str,
        justification: str = "",
        by_ids: tuple[str, ...] = (),
    ) -> Decision:
        """The decision on ``row``'s operation hash, signed with the broker's key."""
        return Decision.signed(
            self._key,
            row.operation_hash,
            approved=approved,
            by=by,
            reason=reason,
            justification=justification,
            by_ids=by_ids,
        )

    def _masked(self, text: str) -> str:
        if not text:
            return ""
        if self._masker is None:
            self._masker = Masker(MaskSettings())
        return self._masker.mask_text(text)[:MAX_JUSTIFICATION]


def _replayed() -> WebhookResult:
    return WebhookResult("replayed", 409, "this delivery was already processed")


def _missing_justification(row: ApprovalRow, click: Click, forge: Forge) -> str | None:
    if click.justification:
        return None
    if not forge.carries_text:
        return f"{_JUSTIFY}, and {row.backend} cannot carry one: use the gitlab backend"
    return (
        f"{_JUSTIFY}: write `/airlock approve {row.request_id} <why>` "
        "(the text after the id is recorded with the decision)"
    )
