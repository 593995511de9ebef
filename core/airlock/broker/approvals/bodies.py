"""Request bodies: what a job sends (webhook payloads: :mod:`airlock.gate.forges.payloads`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from airlock.gate.forges.payloads import (
    CheckRunEvent,
    DeploymentRuleEvent,
    GhInstallation,
    NoteEvent,
)
from airlock.policy.broker_config import ApproverName

__all__ = [
    "ApproversBody",
    "CheckRunEvent",
    "CreateBody",
    "DeploymentRuleEvent",
    "GhInstallation",
    "NoteEvent",
    "OperationBody",
]

# -- bodies ---------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ApproversBody(_Strict):
    users: list[ApproverName] = Field(default_factory=list, max_length=100)
    teams: list[str] = Field(default_factory=list, max_length=100)
    permission: Literal["read", "triage", "write", "maintain", "admin"] = "write"
    allow_self: bool = False
    allow_author: bool = False
    min_approvals: int = Field(default=1, ge=1, le=10)
    require_justification: bool = False


class OperationBody(_Strict):
    kind: Literal["sql", "http", "command", "tool"]
    text: str = Field(min_length=1, max_length=256 * 1024)
    rule_id: str = Field(min_length=1, max_length=128)
    gateway: str | None = Field(default=None, max_length=128)
    repository: str | None = Field(default=None, max_length=256)
    commit: str | None = Field(default=None, max_length=64)
    run_id: str | None = Field(default=None, max_length=64)
    session_id: str | None = Field(default=None, max_length=128)


class CreateBody(_Strict):
    backend: Literal["github-check", "gitlab", "github-environment"]
    operation: OperationBody
    timeout: float = Field(gt=0, le=7 * 24 * 3600)
    pull_request: int | None = Field(default=None, ge=1, le=2**31 - 1)
    merge_request: int | None = Field(default=None, ge=1, le=2**31 - 1)
    approvers: ApproversBody | None = None
