"""Static secrets: named values from the broker config (literal, ``file:`` or ``env:``).

Nothing is minted: the same value goes to every job the grant allows, so the lease is only
bookkeeping (masking, ledger, audit). Revoke cannot invalidate a static secret; it is recorded in
the log and otherwise does nothing. Rotate static secrets at their source.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from airlock.errors import ConfigError
from airlock.providers.interface import (
    CredentialProvider,
    IssuedCredential,
    IssueRequest,
    TtlLimits,
    clamp_ttl,
)
from airlock.providers.secrets import resolve_secret

__all__ = ["StaticConfig", "StaticGrant", "StaticProvider"]

log = logging.getLogger(__name__)

EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]


class StaticConfig(BaseModel):
    """``providers: {static: {secrets: {NAME: "file:/run/secrets/x" | "env:X" | literal}}}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    secrets: dict[EnvName, SecretStr] = Field(min_length=1)


class StaticGrant(BaseModel):
    """A grant: which named secrets the job gets (each becomes an env var of the same name)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    secrets: list[EnvName] = Field(min_length=1)


class StaticProvider(CredentialProvider):
    """Hands out named secrets read at issue time."""

    name: ClassVar[str] = "static"
    settings_model: ClassVar[type[BaseModel]] = StaticGrant
    config_model: ClassVar[type[BaseModel]] = StaticConfig
    ttl_limits: ClassVar[TtlLimits] = TtlLimits(minimum=60, maximum=12 * 3600)
    _config: StaticConfig

    def validate_grant(self, settings: Mapping[str, Any]) -> StaticGrant:
        grant = super().validate_grant(settings)
        assert isinstance(grant, StaticGrant)
        unknown = sorted(set(grant.secrets) - set(self._config.secrets))
        if unknown:
            raise ConfigError(
                f"static grant names secrets the provider does not define: {', '.join(unknown)}",
                hint="add them under providers.static.secrets, or fix the grant",
            )
        return grant

    def issue(self, request: IssueRequest) -> IssuedCredential:
        grant = self.validate_grant(request.settings)
        ttl = clamp_ttl(request.ttl_seconds, self.ttl_limits)
        values = {
            name: resolve_secret(
                self._config.secrets[name].get_secret_value(), f"static secret {name}"
            )
            for name in grant.secrets
        }
        return IssuedCredential(
            lease_id=request.lease_id,
            grant_name=request.grant_name,
            provider=self.name,
            values=values,
            expires_at=datetime.now(UTC) + timedelta(seconds=ttl.granted),
            revoke_handle={"secrets": ",".join(grant.secrets)},
            ttl=ttl,
        )

    def revoke(self, lease_id: str, revoke_handle: Mapping[str, str]) -> None:
        log.info(
            "static lease %s ended (secrets: %s); revoke is a no-op: static secrets stay valid "
            "until rotated at their source",
            lease_id,
            revoke_handle.get("secrets", "?"),
        )
