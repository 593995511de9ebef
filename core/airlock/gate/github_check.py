"""The ``github-check`` backend: a check run with Approve / Deny buttons on the pull request.

The broker, acting as a GitHub App, creates a check run on the pull request's head commit named
``Airlock approval: <summary>``, completed with conclusion ``action_required`` (GitHub shows
requested-action buttons only on completed runs) and two actions. Each action's identifier
carries the first 12 hex digits of the operation hash, so a click can only ever answer the
operation it was shown for. The output shows the masked operation, who asked, the rule and the
expiry. When someone clicks, GitHub sends ``check_run`` / ``requested_action`` to the broker,
which checks the clicker's rights at that moment and rewrites the check run with the outcome.

This module renders those bodies (the broker sends them) and provides the job's side,
:class:`GitHubCheckBackend`, which asks the broker and long-polls for the decision.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from airlock.audit.keys import SigningKey
from airlock.errors import ConfigError
from airlock.gate.broker import BrokerBackend, ForgeTarget
from airlock.gate.interface import Operation, Record, format_time
from airlock.gate.rules import ApproverRules, code_fence

__all__ = [
    "CHECK_NAME_PREFIX",
    "GitHubCheckBackend",
    "action_identifier",
    "check_run_body",
    "outcome_body",
    "parse_identifier",
    "progress_body",
    "pull_request_number",
]

CHECK_NAME_PREFIX = "Airlock approval: "
_HASH_PREFIX = 12
_IDENTIFIER = re.compile(r"^(approve|deny)-([0-9a-f]{12})$")
_MAX_TEXT = 60000
_CONCLUSIONS = {"approved": "success", "denied": "failure", "expired": "timed_out"}


class GitHubCheckBackend(BrokerBackend):
    """The job's side of ``github-check``: the broker posts the check run and gets the clicks."""

    name: ClassVar[str] = "github-check"
    forge: ClassVar[str] = "github-check"

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
        if approvers is not None and approvers.require_justification:
            raise ConfigError(
                "github-check cannot require a justification: a check-run button carries no "
                "text, so no approval could ever be accepted",
                hint="use the gitlab backend for require_justification, or drop it",
            )
        super().__init__(
            broker_url,
            job_token,
            key=key,
            record=record,
            target=target,
            approvers=approvers,
            verify_broker=verify_broker,
        )


def action_identifier(approve: bool, operation_hash: str) -> str:
    """``approve-<12 hex>`` or ``deny-<12 hex>``: at most 20 characters, as GitHub requires."""
    return f"{'approve' if approve else 'deny'}-{operation_hash[:_HASH_PREFIX]}"


def parse_identifier(identifier: str) -> tuple[bool, str] | None:
    """``(approve, hash prefix)`` from an action identifier, None for anything else."""
    match = _IDENTIFIER.fullmatch(identifier or "")
    if match is None:
        return None
    return match.group(1) == "approve", match.group(2)


def summary_line(op: Operation, width: int = 60) -> str:
    """The first line of the operation, shortened: the check run's name and title."""
    first = " ".join(op.text.split())
    return first if len(first) <= width else first[: width - 1] + "…"


def check_run_body(
    *,
    request_id: str,
    op: Operation,
    head_sha: str,
    requester: str | None,
    expires_at: float,
    details_url: str | None,
) -> dict[str, Any]:
    """``POST /repos/{repo}/check-runs``: completed, ``action_required``, Approve and Deny."""
    op_hash = op.operation_hash()
    body: dict[str, Any] = {
        "name": CHECK_NAME_PREFIX + summary_line(op),
        "head_sha": head_sha,
        "external_id": request_id,
        "status": "completed",
        "conclusion": "action_required",
        "output": {
            "title": f"Approval needed: {summary_line(op)}",
            "summary": _summary(request_id, op, requester, expires_at),
            "text": _operation_block(op),
        },
        "actions": _actions(op_hash),
    }
    if details_url:
        body["details_url"] = details_url
    return body


def progress_body(
    *,
    request_id: str,
    op: Operation,
    requester: str | None,
    expires_at: float,
    approvers: list[str],
    needed: int,
) -> dict[str, Any]:
    """``PATCH`` while more approvals are needed: "1 of 2 approvals", the buttons kept."""
    count = f"{len(approvers)} of {needed} approvals"
    who = ", ".join(f"`{a}`" for a in approvers)
    return {
        "status": "completed",
        "conclusion": "action_required",
        "output": {
            "title": f"{count}: {summary_line(op)}",
            "summary": f"**{count}** so far ({who}); each approver counts once.\n\n"
            + _summary(request_id, op, requester, expires_at),
            "text": _operation_block(op),
        },
        "actions": _actions(op.operation_hash()),
    }


def _actions(op_hash: str) -> list[dict[str, str]]:
    return [
        {
            "label": "Approve",
            "description": "Run this operation once",
            "identifier": action_identifier(True, op_hash),
        },
        {
            "label": "Deny",
            "description": "Refuse this operation",
            "identifier": action_identifier(False, op_hash),
        },
    ]


def outcome_body(
    status: str, *, by: str, at: str, reason: str, operation_hash: str
) -> dict[str, Any]:
    """``PATCH /repos/{repo}/check-runs/{id}``: the outcome, who and when; no more buttons."""
    verdict = {"approved": "Approved", "denied": "Denied", "expired": "Expired (denied)"}[status]
    lines = [
        f"**{verdict}** by `{by}` at {at}.",
        f"Reason: {reason}" if reason else "",
        f"Operation hash: `{operation_hash}`",
    ]
    return {
        "status": "completed",
        "conclusion": _CONCLUSIONS[status],
        "output": {
            "title": f"{verdict} by {by}",
            "summary": "\n\n".join(line for line in lines if line),
        },
        "actions": [],
    }


def pull_request_number(environ: Mapping[str, str] | None = None) -> int | None:
    """The pull request this GitHub Actions job runs for, from the event file or the ref."""
    env = os.environ if environ is None else environ
    event_path = env.get("GITHUB_EVENT_PATH")
    if event_path:
        try:
            event = json.loads(Path(event_path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            event = {}
        number = (
            (event.get("pull_request") or {}).get("number") if isinstance(event, dict) else None
        )
        if isinstance(number, int):
            return number
    match = re.fullmatch(r"refs/pull/(\d+)/(merge|head)", env.get("GITHUB_REF", ""))
    return int(match.group(1)) if match else None


def target_from_environment(environ: Mapping[str, str] | None = None) -> ForgeTarget:
    """The :class:`ForgeTarget` of the current GitHub Actions job."""
    return ForgeTarget(pull_request=pull_request_number(environ))


def _summary(request_id: str, op: Operation, requester: str | None, expires_at: float) -> str:
    rows = [
        ("Requested by", f"`{requester or 'unknown'}`"),
        ("Rule", f"`{op.rule_id}`"),
        ("Kind", f"`{op.kind}`" + (f" via gateway `{op.gateway}`" if op.gateway else "")),
        ("Expires", f"{format_time(expires_at)} (unanswered = denied)"),
        ("Run", f"`{op.run_id or '-'}` at commit `{(op.commit or '-')[:12]}`"),
        ("Operation hash", f"`{op.operation_hash()}`"),
        ("Request", f"`{request_id}`"),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return (
        "An Airlock session holds this operation until someone entitled to approve it decides. "
        "The requester, the pull request author and bots cannot approve.\n\n"
        f"| | |\n|---|---|\n{table}\n\n{_operation_block(op)}"
    )


def _operation_block(op: Operation) -> str:
    text = op.text if len(op.text) <= _MAX_TEXT else op.text[:_MAX_TEXT] + "\n… (truncated)"
    fence = code_fence(text)
    lang = {"sql": "sql", "http": "http"}.get(op.kind, "")
    return f"Operation (masked):\n\n{fence}{lang}\n{text}\n{fence}"
