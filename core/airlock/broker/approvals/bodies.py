"""Request bodies: what a job sends, and the parts of GitHub/GitLab webhook payloads we read."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

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

# Forge ids and numbers fit 63 bits; anything larger is refused by validation (a 400), never
# carried into SQL or a URL.
ForgeId = Annotated[int, Field(ge=0, le=2**63 - 1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ApproversBody(_Strict):
    users: list[str] = Field(default_factory=list, max_length=100)
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


class _GhUser(_Loose):
    login: str
    id: ForgeId
    type: str = "User"


class _GhRepo(_Loose):
    id: ForgeId
    full_name: str


class GhInstallation(_Loose):
    id: ForgeId


class _GhCheckRun(_Loose):
    id: ForgeId
    external_id: str | None = None
    head_sha: str | None = None


class _GhAction(_Loose):
    identifier: str


class CheckRunEvent(_Loose):
    action: str
    check_run: _GhCheckRun
    requested_action: _GhAction | None = None
    repository: _GhRepo
    sender: _GhUser
    installation: GhInstallation | None = None


class DeploymentRuleEvent(_Loose):
    action: str
    environment: str
    deployment_callback_url: str
    repository: _GhRepo
    sender: _GhUser
    installation: GhInstallation | None = None


class _GlUser(_Loose):
    id: ForgeId
    username: str


class _GlProject(_Loose):
    id: ForgeId
    path_with_namespace: str


class _GlNote(_Loose):
    id: ForgeId
    note: str
    noteable_type: str
    system: bool = False


class _GlMergeRequest(_Loose):
    iid: ForgeId


class NoteEvent(_Loose):
    object_kind: Literal["note"]
    user: _GlUser
    project: _GlProject
    object_attributes: _GlNote
    merge_request: _GlMergeRequest | None = None
