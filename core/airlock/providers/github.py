"""GitHub: a GitHub App installation access token narrowed to named repositories and permissions.

Issue: ``POST /app/installations/{id}/access_tokens`` with a JWT signed by the App's private key
(PyGithub builds and signs it) and a body of ``repositories``/``repository_ids`` and
``permissions`` from the grant. A grant must name repositories and permissions: an un-narrowed
token (every repository of the installation, every permission of the App) is never requested.
If GitHub answers with a broader token than asked, it is revoked at once and the issue fails.

GitHub fixes the token's life at one hour. The lease (``expires_at``) ends at the requested TTL
and the broker revokes then; ``revoke_handle["upstream_expires_at"]`` is GitHub's hard expiry.

Revoke: ``DELETE /installation/token``, authenticated with the token itself. So that revoke needs
no secret from the ledger, the token is sealed (Fernet, AES-128-CBC + HMAC-SHA256) with the
provider's ``token_seal_key`` into ``revoke_handle["sealed_token"]``; only a broker holding the
key can open it. Without a configured key, a per-process key is generated: revoke then only works
in the broker process that issued the token (set the key when running replicas).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, ClassVar, Literal, Self

import requests
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import serialization
from github import Auth, Github, GithubException, GithubIntegration
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

__all__ = ["GitHubConfig", "GitHubGrant", "GitHubProvider"]

log = logging.getLogger(__name__)

GITHUB_TOKEN_SECONDS = 3600
_REPO = r"^(?:[A-Za-z0-9-]{1,39}/)?[A-Za-z0-9._-]{1,100}$"
Permission = Literal["read", "write", "admin"]
PermissionName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]


class GitHubConfig(BaseModel):
    """A ``providers:`` entry: the App, its installation, and the key that seals revoke handles."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    app_id: int | str
    installation_id: int = Field(ge=1)
    private_key: SecretStr = Field(description="PEM, or file:PATH / env:NAME")
    owner: str | None = Field(default=None, description="the installation's account, if pinned")
    api_url: str = "https://api.github.com"
    token_seal_key: SecretStr | None = Field(default=None, description="Fernet key")
    timeout: int = Field(default=10, ge=1, le=60)


class GitHubGrant(BaseModel):
    """A grant: which repositories, which permissions, and the env var the token goes in."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    repositories: list[Annotated[str, Field(pattern=_REPO)]] = Field(default_factory=list)
    repository_ids: list[int] = Field(default_factory=list)
    permissions: dict[PermissionName, Permission] = Field(min_length=1)
    env_var: str = Field(default="GITHUB_TOKEN", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")

    @model_validator(mode="after")
    def _narrowed(self) -> Self:
        if not self.repositories and not self.repository_ids:
            raise ValueError("name the repositories (or repository_ids) the token may reach")
        owners = {r.split("/")[0] for r in self.repositories if "/" in r}
        if len(owners) > 1:
            raise ValueError("all repositories must belong to the installation's one owner")
        return self

    def repo_names(self) -> list[str]:
        """Repository names as GitHub's API wants them: without the owner."""
        return [r.rsplit("/", 1)[-1] for r in self.repositories]


class GitHubProvider(CredentialProvider):
    """GitHub App installation tokens."""

    name: ClassVar[str] = "github"
    settings_model: ClassVar[type[BaseModel]] = GitHubGrant
    config_model: ClassVar[type[BaseModel]] = GitHubConfig
    ttl_limits: ClassVar[TtlLimits] = TtlLimits(minimum=60, maximum=GITHUB_TOKEN_SECONDS)
    _config: GitHubConfig

    def __init__(self, config: GitHubConfig) -> None:
        super().__init__(config)
        key = config.token_seal_key
        raw = resolve_secret(key.get_secret_value(), "github token_seal_key") if key else None
        try:
            self._fernet = Fernet(raw or Fernet.generate_key())
        except ValueError:
            raise ConfigError(
                "github token_seal_key is not a Fernet key (32 url-safe base64-encoded bytes)",
                hint="generate one with: python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())'",
            ) from None

    def validate_grant(self, settings: Mapping[str, Any]) -> GitHubGrant:
        grant = super().validate_grant(settings)
        assert isinstance(grant, GitHubGrant)
        owner = self._config.owner
        foreign = [r for r in grant.repositories if "/" in r and r.split("/")[0] != owner]
        if owner is not None and foreign:
            raise ConfigError(
                f"github grant names repositories outside the installation's owner {owner}: "
                + ", ".join(foreign)
            )
        return grant

    # -- issue ---------------------------------------------------------------------------------

    def issue(self, request: IssueRequest) -> IssuedCredential:
        grant = self.validate_grant(request.settings)
        ttl = clamp_ttl(request.ttl_seconds, self.ttl_limits)
        body: dict[str, Any] = {"permissions": dict(grant.permissions)}
        if grant.repositories:
            body["repositories"] = grant.repo_names()
        if grant.repository_ids:
            body["repository_ids"] = grant.repository_ids
        path = f"/app/installations/{self._config.installation_id}/access_tokens"
        data = self._call(self._app_client().requester, "POST", path, body)
        token = str(data["token"])
        self._check_narrowed(token, grant, data)
        upstream_expiry = _parse_time(data.get("expires_at"))
        lease_end = datetime.now(UTC) + timedelta(seconds=ttl.granted)
        return IssuedCredential(
            lease_id=request.lease_id,
            grant_name=request.grant_name,
            provider=self.name,
            values={grant.env_var: token},
            expires_at=min(lease_end, upstream_expiry or lease_end),
            revoke_handle={
                "installation_id": str(self._config.installation_id),
                "sealed_token": self._fernet.encrypt(token.encode()).decode(),
                "upstream_expires_at": (upstream_expiry or lease_end).isoformat(),
            },
            ttl=ttl,
        )

    def _check_narrowed(self, token: str, grant: GitHubGrant, data: Mapping[str, Any]) -> None:
        granted = {str(r.get("name")) for r in data.get("repositories") or ()}
        asked = set(grant.repo_names())
        broad = data.get("repository_selection") == "all" or (asked and not granted <= asked)
        if broad:
            self._delete_token(token)
            raise ProviderError(
                self.name,
                "GitHub issued a token broader than the requested repositories; it was revoked",
            )

    # -- revoke --------------------------------------------------------------------------------

    def revoke(self, lease_id: str, revoke_handle: Mapping[str, str]) -> None:
        sealed = revoke_handle.get("sealed_token")
        if not sealed:
            raise ConfigError(f"github lease {lease_id}: revoke handle has no sealed_token")
        try:
            token = self._fernet.decrypt(sealed.encode()).decode()
        except InvalidToken:
            raise ProviderError(
                self.name,
                f"cannot open the sealed token of lease {lease_id}",
                hint="every broker replica needs the same github token_seal_key; the token "
                "expires on its own at upstream_expires_at",
            ) from None
        self._delete_token(token)
        log.info("github lease %s: installation token revoked", lease_id)

    def _delete_token(self, token: str) -> None:
        client = Github(
            auth=Auth.Token(token),
            base_url=self._config.api_url,
            timeout=self._config.timeout,
            seconds_between_requests=None,
            seconds_between_writes=None,
        )
        # 401: already revoked or expired. Revoke is idempotent.
        self._call(client.requester, "DELETE", "/installation/token", None, tolerate=(401,))

    # -- HTTP ----------------------------------------------------------------------------------

    def _app_client(self) -> GithubIntegration:
        pem = resolve_secret(self._config.private_key.get_secret_value(), "github private_key")
        try:
            serialization.load_pem_private_key(pem.encode(), password=None)
        except (ValueError, TypeError):
            raise ConfigError(
                "github private_key is not an unencrypted PEM private key",
                hint="use the .pem file GitHub generated for the App (file:/path/to/key.pem)",
            ) from None
        return GithubIntegration(
            auth=Auth.AppAuth(self._config.app_id, pem),
            base_url=self._config.api_url,
            timeout=self._config.timeout,
            seconds_between_requests=None,
            seconds_between_writes=None,
        )

    def _call(
        self,
        requester: Any,
        verb: str,
        path: str,
        body: Mapping[str, Any] | None,
        *,
        tolerate: tuple[int, ...] = (),
    ) -> Any:
        try:
            _, data = requester.requestJsonAndCheck(verb, path, input=body)
        except GithubException as exc:
            if exc.status in tolerate:
                return None
            message = exc.data.get("message", "") if isinstance(exc.data, dict) else ""
            raise ProviderError(
                self.name,
                f"GitHub refused {verb} {path}: {exc.status} {str(message)[:300]}",
                hint="check the App id, private key, installation id, and that the App has the "
                "requested permissions on those repositories",
            ) from None
        except requests.RequestException as exc:
            raise ProviderError(
                self.name,
                f"cannot reach GitHub at {self._config.api_url}: {type(exc).__name__}",
                hint="check api_url and the broker's network access to GitHub",
            ) from None
        return data


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return None
