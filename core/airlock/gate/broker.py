"""The waiting side of the broker-backed approval backends (github-check, gitlab, environment).

    job  ──POST /v1/approvals (Bearer job token)──▶ broker ──▶ check run / MR note
         ◀── request id, URL
         ──GET /v1/approvals/{id}?wait=25 ─────────▶ (long-poll, repeated until the deadline)
         ◀── pending | approved | denied | expired, signed by the broker's key

The broker decides who may click (at click time); this side checks that the decision is for the
operation it asked about and, when it knows the broker's public keys, that the broker signed it,
then signs its own record with the session key. While the broker is unreachable the operation
stays held; at the deadline it is denied as expired. Only a failure to *post* the request fails
at once (:class:`GateError`, exit 85): then nobody could ever see it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from airlock.audit.keys import SigningKey
from airlock.brokerclient import AsyncBrokerClient, BrokerClient
from airlock.errors import AirlockError, InfrastructureUnavailable
from airlock.events import EventType
from airlock.gate.interface import (
    Answer,
    ApprovalBackend,
    ApprovalRequest,
    Decision,
    GateError,
    Record,
)
from airlock.gate.rules import ApproverRules

__all__ = ["BrokerBackend", "ForgeTarget", "decision_from_status"]

_HINT = "check --broker (AIRLOCK_BROKER), the job token from `airlock credentials`, and the broker"
_RETRY_SECONDS = 1.0


@dataclass(frozen=True)
class ForgeTarget:
    """Where the request is shown: a pull request (GitHub) or merge request (GitLab) number."""

    pull_request: int | None = None
    merge_request: int | None = None

    def to_dict(self) -> dict[str, int]:
        """Only the numbers that are set."""
        out: dict[str, int] = {}
        if self.pull_request is not None:
            out["pull_request"] = self.pull_request
        if self.merge_request is not None:
            out["merge_request"] = self.merge_request
        return out


def decision_from_status(data: Mapping[str, Any]) -> Decision | None:
    """The broker's signed decision in a status body, or None while pending / expired."""
    if data.get("status") not in ("approved", "denied"):
        return None
    return Decision(
        approved=data.get("status") == "approved",
        by=str(data.get("by", "")),
        at=str(data.get("at", "")),
        reason=str(data.get("reason", "")),
        operation_hash=str(data.get("operation_hash", "")),
        signature=str(data.get("signature", "")),
        key_id=str(data.get("key_id", "")),
        justification=str(data.get("justification") or ""),
        by_ids=tuple(str(i) for i in data.get("by_ids") or ()),
    )


class BrokerBackend(ApprovalBackend):
    """Ask the broker, which shows the request on the forge and receives the clicks."""

    name: ClassVar[str] = "broker"
    forge: ClassVar[str] = "github-check"
    long_poll: float = 25.0

    def __init__(
        self,
        broker_url: str,
        job_token: str,
        *,
        key: SigningKey,
        record: Record | None = None,
        target: ForgeTarget | None = None,
        approvers: ApproverRules | None = None,
        verify_broker: bool = True,
    ) -> None:
        super().__init__(key=key, record=record)
        self.broker_url = broker_url.rstrip("/")
        self._job_token = job_token
        self._target = target or ForgeTarget()
        self._approvers = approvers
        self._verify = verify_broker
        self._remote: dict[str, str] = {}
        self._broker_keys: dict[str, Ed25519PublicKey] = {}
        self._client = BrokerClient(self.broker_url)
        self.last_error = ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(broker_url={self.broker_url!r})"

    def close(self) -> None:
        self._client.close()

    # -- ApprovalBackend ------------------------------------------------------------------------

    def _submit(self, req: ApprovalRequest) -> None:
        body: dict[str, Any] = {
            "backend": self.forge,
            "operation": req.operation.to_dict(),
            "timeout": _seconds_left(req),
            **self._target.to_dict(),
        }
        if self._approvers is not None:
            body["approvers"] = self._approvers.to_dict()
        try:
            data = self._client.create_approval(self._job_token, body)
        except AirlockError as exc:
            raise _gate_error(exc) from None
        remote = str(data.get("request_id", ""))
        if data.get("operation_hash") != req.operation_hash or not remote:
            raise GateError("the broker registered a different operation than the one asked for")
        self._remote[req.request_id] = remote
        if self._verify:
            self._load_keys()
        self._emit(
            EventType.APPROVAL_POSTED,
            {"request_id": req.request_id, "broker_request": remote, "url": data.get("url")},
        )

    def _fetch(self, req: ApprovalRequest) -> Answer | None:
        try:
            data = self._client.approval_status(self._job_token, self._remote_id(req))
        except AirlockError as exc:
            self.last_error = exc.message
            return None
        return self._answer(req, data)

    async def wait(self, request_id: str, timeout: float) -> Decision:
        """Long-poll the broker until a decision, the broker's expiry or ``timeout``."""
        req = self._get(request_id)
        deadline = time.monotonic() + timeout
        async with AsyncBrokerClient(self.broker_url) as client:
            while (left := deadline - time.monotonic()) > 0:
                decided = self._existing(req)
                if decided is not None:
                    return decided
                data = await self._poll(client, req, min(left, self.long_poll))
                if data is None:
                    await asyncio.sleep(min(_RETRY_SECONDS, max(left - 0.01, 0)))
                    continue
                if data.get("status") == "expired":
                    return self._expire(req)
                answer = self._answer(req, data)
                if answer is not None:
                    return self._settle(req, answer)
        return self._expire(req)

    # -- helpers ----------------------------------------------------------------------------------

    def _existing(self, req: ApprovalRequest) -> Decision | None:
        with self._lock:
            return self._decisions.get(req.request_id)

    async def _poll(
        self, client: AsyncBrokerClient, req: ApprovalRequest, wait: float
    ) -> dict[str, Any] | None:
        try:
            return await client.approval_status(self._job_token, self._remote_id(req), wait)
        except InfrastructureUnavailable as exc:
            self.last_error = f"the broker is unreachable: {exc.message}"
        except AirlockError as exc:
            self.last_error = exc.message
        return None

    def _answer(self, req: ApprovalRequest, data: Mapping[str, Any]) -> Answer | None:
        decision = decision_from_status(data)
        if decision is None:
            return None
        if self._verify and not self._signed_by_broker(decision, req.operation_hash):
            return Answer(
                False,
                "airlock",
                req.operation_hash,
                "refused: the broker's decision is not signed by the broker's key",
            )
        return Answer(
            decision.approved,
            decision.by,
            decision.operation_hash,
            decision.reason,
            decision.justification,
            decision.by_ids,
        )

    def _signed_by_broker(self, decision: Decision, operation_hash: str) -> bool:
        public = self._broker_keys.get(decision.key_id)
        return public is not None and decision.verify(public, operation_hash)

    def _load_keys(self) -> None:
        try:
            keys = self._client.public_keys()
        except AirlockError as exc:
            raise _gate_error(exc) from None
        for entry in keys:
            try:
                public = load_pem_public_key(str(entry["public_pem"]).encode())
            except (KeyError, ValueError, TypeError):
                continue
            if isinstance(public, Ed25519PublicKey):
                self._broker_keys[str(entry.get("key_id"))] = public

    def _remote_id(self, req: ApprovalRequest) -> str:
        remote = self._remote.get(req.request_id)
        if remote is None:
            raise GateError("this request was never posted to the broker")
        return remote


def _gate_error(exc: AirlockError) -> GateError:
    """The client's error as the gate's own (the message already says what failed)."""
    return GateError(f"the approval request failed: {exc.message}", hint=_HINT)


def _seconds_left(req: ApprovalRequest) -> float:
    if req.expires_at is None:
        return 3600.0
    return max(1.0, round(req.expires_at - time.time(), 3))
