"""The event vocabulary of a session log.

Every line of ``events.jsonl`` is ``{"seq", "ts", "type", "prev", "data"}``; ``type`` is one of
:class:`EventType` and ``data`` is a JSON object whose keys are listed per type in
docs/session-format.md. Values that were secrets never appear: only masked text, or a SHA-256.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = ["EventType", "Identity", "utc_now"]


class EventType(enum.StrEnum):
    SESSION_START = "session.start"
    SESSION_END = "session.end"
    CAPTURE = "capture.status"  # how exec capture runs: required / best_effort, and the tracer
    PROCESS_EXEC = "process.exec"
    PROCESS_EXIT = "process.exit"
    OUTPUT = "output"
    INPUT = "input"
    SIGNAL = "signal"
    MASK_REGISTERED = "mask.registered"  # a secret added at run time: rule id + hash only
    DB_QUERY = "db.query"
    DB_RESULT = "db.result"
    HTTP_REQUEST = "http.request"
    HTTP_RESPONSE = "http.response"
    GUARDRAIL = "guardrail.decision"
    APPROVAL_REQUESTED = "approval.requested"
    APPROVAL_POSTED = "approval.posted"
    APPROVAL_DECIDED = "approval.decided"
    APPROVAL_EXPIRED = "approval.expired"
    APPROVAL_CANCELLED = "approval.cancelled"  # the operation will never run: reason says why
    CREDENTIAL_ISSUED = "credential.issued"
    CHECKPOINT = "checkpoint"
    GATEWAY_STARTED = "gateway.started"
    LLM_REQUEST = "llm.request"  # model API: model, new messages, tools by hash
    LLM_RESPONSE = "llm.response"  # assembled from the stream: text, tool calls, usage
    MCP_REQUEST = "mcp.request"  # tools/call, resources/read (and refused calls)
    MCP_RESPONSE = "mcp.response"  # result or error, duration
    NET_CONNECT = "net.connect"  # one egress attempt: host, port, sni, outcome, rule, bytes
    SANDBOX_STATUS = "sandbox.status"  # the sandbox's mode, walls and self-check probe results
    ERROR = "airlock.error"


def utc_now() -> str:
    """RFC 3339 UTC timestamp with microseconds, the one format used in logs and manifests."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Identity:
    """Who ran the session: the CI platform's view, recorded in ``session.start``.

    Immutable ids (``repository_id``, ``repository_owner_id``; GitLab ``project_id``,
    ``namespace_id``) are what policies bind to; names are for humans.
    """

    platform: str  # "github" | "gitlab" | "local"
    repository: str | None = None
    repository_id: str | None = None
    repository_owner: str | None = None
    repository_owner_id: str | None = None
    run_id: str | None = None
    run_attempt: str | None = None
    sha: str | None = None
    ref: str | None = None
    event: str | None = None
    actor: str | None = None
    actor_id: str | None = None
    workflow: str | None = None
    job: str | None = None
    server_url: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, {})}
