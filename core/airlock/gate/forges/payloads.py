"""The parts of GitHub and GitLab webhook payloads the forges read (everything else ignored).

Ids are bounded to 63 bits: anything larger is refused by validation, never carried into SQL
or a URL."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "CheckRunEvent",
    "DeploymentRuleEvent",
    "ForgeId",
    "GhInstallation",
    "NoteEvent",
]

ForgeId = Annotated[int, Field(ge=0, le=2**63 - 1)]


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


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
    action: str | None = None  # "create" | "update" (GitLab 17.0+; edits fire since 16.11)
    created_at: str | None = None
    updated_at: str | None = None

    @property
    def edited(self) -> bool:
        """True for a note edited after it was written (GitLab sends a note hook on edits)."""
        if self.action is not None:
            return self.action != "create"
        return bool(self.created_at and self.updated_at and self.created_at != self.updated_at)


class _GlMergeRequest(_Loose):
    iid: ForgeId


class NoteEvent(_Loose):
    object_kind: Literal["note"]
    user: _GlUser
    project: _GlProject
    object_attributes: _GlNote
    merge_request: _GlMergeRequest | None = None
