"""GitLab: a project (or group) access token with the grant's scopes and access level.

Issue: ``POST /projects/:id/access_tokens`` (or ``/groups/:id/access_tokens``) with ``name``,
``scopes``, ``access_level`` and ``expires_at``, through python-gitlab with the provider's own
token (Maintainer or Owner of the project/group, ``api`` scope).

GitLab expires tokens by *date*, at 00:00 UTC of ``expires_at``, and refuses today's date. So
the upstream expiry is the first midnight UTC at or after ``now + ttl``, and never before
tomorrow: a 15-minute lease can leave a token that GitLab would accept for up to a day. The lease
(``expires_at``) still ends at ``now + ttl`` and the broker revokes then (at job end, or by its
sweeper); ``revoke_handle["upstream_expires_at"]`` records GitLab's hard expiry.

Revoke: ``DELETE /projects/:id/access_tokens/:token_id``; a token already gone (404) is fine.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, ClassVar, Literal, Self

import gitlab
import gitlab.exceptions
import requests
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from airlock.errors import ConfigError
from airlock.providers.interface import (
    CredentialProvider,
    IssuedCredential,
    IssueRequest,
    ProviderError,
    TtlLimits,
    clamp_ttl,
)
from airlock.providers.secrets import resolve_secret

__all__ = ["ACCESS_LEVELS", "GitLabConfig", "GitLabGrant", "GitLabProvider", "upstream_expiry"]

log = logging.getLogger(__name__)

ACCESS_LEVELS = {"guest": 10, "planner": 15, "reporter": 20, "developer": 30, "maintainer": 40,
                 "owner": 50}  # fmt: skip
Scope = Literal[
    "api",
    "read_api",
    "read_registry",
    "write_registry",
    "read_repository",
    "write_repository",
    "create_runner",
    "manage_runner",
    "ai_features",
    "k8s_proxy",
    "read_observability",
    "write_observability",
]
Level = Literal["guest", "planner", "reporter", "developer", "maintainer", "owner"]


class GitLabConfig(BaseModel):
    """A ``providers:`` entry: the GitLab instance and the broker's token there."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    url: str = "https://gitlab.com"
    token: SecretStr = Field(description="the broker's token (api scope), or file:/env:")
    allowed_projects: list[int | str] | None = None
    allowed_groups: list[int | str] | None = None
    max_access_level: Level = "maintainer"
    timeout: int = Field(default=10, ge=1, le=60)


class GitLabGrant(BaseModel):
    """A grant: one project or one group, scopes and an access level (all required)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    project: int | str | None = None
    group: int | str | None = None
    scopes: list[Scope] = Field(min_length=1)
    access_level: Level
    env_var: str = Field(default="GITLAB_TOKEN", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")

    @model_validator(mode="after")
    def _one_target(self) -> Self:
        if (self.project is None) == (self.group is None):
            raise ValueError("name exactly one of project or group")
        return self

    @property
    def kind(self) -> Literal["project", "group"]:
        return "project" if self.project is not None else "group"

    @property
    def target(self) -> int | str:
        target = self.project if self.project is not None else self.group
        assert target is not None
        return target


def upstream_expiry(now: datetime, ttl_seconds: int) -> date:
    """The ``expires_at`` date: first midnight UTC at or after ``now + ttl``, at least tomorrow."""
    end = now.astimezone(UTC) + timedelta(seconds=ttl_seconds)
    day = end.date() if end.time() == time(0) else end.date() + timedelta(days=1)
    return max(day, now.astimezone(UTC).date() + timedelta(days=1))


class GitLabProvider(CredentialProvider):
    """GitLab project and group access tokens."""

    name: ClassVar[str] = "gitlab"
    settings_model: ClassVar[type[BaseModel]] = GitLabGrant
    config_model: ClassVar[type[BaseModel]] = GitLabConfig
    ttl_limits: ClassVar[TtlLimits] = TtlLimits(minimum=60, maximum=24 * 3600)
    _config: GitLabConfig

    def validate_grant(self, settings: Mapping[str, Any]) -> GitLabGrant:
        grant = super().validate_grant(settings)
        assert isinstance(grant, GitLabGrant)
        cfg = self._config
        allowed = cfg.allowed_projects if grant.kind == "project" else cfg.allowed_groups
        if allowed is not None and grant.target not in allowed:
            raise ConfigError(
                f"gitlab grant {grant.kind} {grant.target} is not in allowed_{grant.kind}s"
            )
        if ACCESS_LEVELS[grant.access_level] > ACCESS_LEVELS[cfg.max_access_level]:
            raise ConfigError(
                f"gitlab grant access_level {grant.access_level} is above the provider's "
                f"max_access_level {cfg.max_access_level}"
            )
        return grant

    def issue(self, request: IssueRequest) -> IssuedCredential:
        grant = self.validate_grant(request.settings)
        ttl = clamp_ttl(request.ttl_seconds, self.ttl_limits)
        now = datetime.now(UTC)
        expiry = upstream_expiry(now, ttl.granted)
        body = {
            "name": f"airlock-{request.lease_id}-{request.session_name}"[:255],
            "scopes": list(grant.scopes),
            "access_level": ACCESS_LEVELS[grant.access_level],
            "expires_at": expiry.isoformat(),
        }
        created = self._request("create", grant.kind, grant.target, lambda m: m.create(body))
        return IssuedCredential(
            lease_id=request.lease_id,
            grant_name=request.grant_name,
            provider=self.name,
            values={grant.env_var: str(created.token)},
            expires_at=now + timedelta(seconds=ttl.granted),
            revoke_handle={
                "kind": grant.kind,
                "target": str(grant.target),
                "token_id": str(created.id),
                "upstream_expires_at": datetime.combine(expiry, time(0), UTC).isoformat(),
            },
            ttl=ttl,
        )

    def revoke(self, lease_id: str, revoke_handle: Mapping[str, str]) -> None:
        kind, target = revoke_handle.get("kind", "project"), revoke_handle.get("target")
        token_id = revoke_handle.get("token_id", "")
        if kind not in ("project", "group") or not target or not token_id.isdigit():
            raise ConfigError(f"gitlab lease {lease_id}: malformed revoke handle")
        target_id: int | str = int(target) if target.isdigit() else target
        self._request("revoke", kind, target_id, lambda m: m.delete(int(token_id)), gone_ok=True)
        log.info("gitlab lease %s: %s access token %s revoked", lease_id, kind, token_id)

    def _request(
        self, what: str, kind: str, target: int | str, action: Any, *, gone_ok: bool = False
    ) -> Any:
        client = gitlab.Gitlab(
            self._config.url,
            private_token=resolve_secret(self._config.token.get_secret_value(), "gitlab token"),
            timeout=self._config.timeout,
        )
        parent = (client.projects if kind == "project" else client.groups).get(target, lazy=True)
        try:
            return action(parent.access_tokens)
        except gitlab.exceptions.GitlabError as exc:
            if gone_ok and exc.response_code == 404:
                return None
            raise ProviderError(
                self.name,
                f"GitLab refused to {what} the {kind} access token for {target}: "
                f"{exc.response_code} {str(exc.error_message)[:300]}",
                hint="check the broker's GitLab token (api scope, Maintainer/Owner of the "
                f"{kind}) and that the scopes and access level are allowed",
            ) from None
        except requests.RequestException as exc:
            raise ProviderError(
                self.name,
                f"cannot reach GitLab at {self._config.url}: {type(exc).__name__}",
                hint="check url and the broker's network access to GitLab",
            ) from None
