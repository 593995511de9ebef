"""The one interface every credential provider implements.

A provider turns a *grant* (named in the broker config, validated by ``settings_model``) into one
short-lived credential, and can revoke it later from non-secret data alone (``revoke_handle``).

    CredentialProvider (abstract)
     ├── StaticProvider     static.py    named secrets from the broker config or files
     ├── PostgresProvider   postgres.py  an ephemeral role airlock_<lease> with VALID UNTIL
     ├── AwsProvider        aws.py       STS AssumeRole / AssumeRoleWithWebIdentity
     ├── GitHubProvider     github.py    GitHub App installation token, narrowed
     └── GitLabProvider     gitlab.py    GitLab project access token

Errors: a bad grant or provider config raises :class:`~airlock.errors.ConfigError`; an upstream
that cannot be reached or refuses raises :class:`ProviderError` (fail closed, exit 85). Neither
message ever holds a secret value: pydantic errors are reported by location and reason only.
"""

from __future__ import annotations

import hashlib
import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ValidationError

from airlock.errors import ConfigError, InfrastructureUnavailable

__all__ = [
    "DEFAULT_TTL_SECONDS",
    "CredentialProvider",
    "IssueRequest",
    "IssuedCredential",
    "ProviderError",
    "TtlDecision",
    "TtlLimits",
    "clamp_ttl",
    "describe_validation_error",
    "get_provider",
    "provider_registry",
]

DEFAULT_TTL_SECONDS = 900

_IMPLEMENTATIONS = {
    "static": ("airlock.providers.static", "StaticProvider", None),
    "postgres": ("airlock.providers.postgres", "PostgresProvider", "psycopg[binary]"),
    "aws": ("airlock.providers.aws", "AwsProvider", "boto3"),
    "github": ("airlock.providers.github", "GitHubProvider", "PyGithub"),
    "gitlab": ("airlock.providers.gitlab", "GitLabProvider", "python-gitlab"),
}


class ProviderError(InfrastructureUnavailable):
    """The provider's upstream is unreachable or refused; nothing was issued (fail closed)."""

    default_hint = "check that the provider's upstream is reachable and its broker credentials work"

    def __init__(self, provider: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(f"{provider} provider: {message}", hint=hint)
        self.provider = provider


@dataclass(frozen=True)
class TtlLimits:
    """What a provider can honour: ``minimum`` ≤ TTL ≤ ``maximum`` seconds."""

    minimum: int
    maximum: int
    default: int = DEFAULT_TTL_SECONDS


@dataclass(frozen=True)
class TtlDecision:
    """The TTL asked for, the TTL granted, and why they differ (``None`` when they do not)."""

    requested: int
    granted: int
    reason: str | None = None


def clamp_ttl(requested: int | None, limits: TtlLimits) -> TtlDecision:
    """Clamp a requested TTL into ``limits``; ``None`` means the default (900 s)."""
    asked = limits.default if requested is None else requested
    if asked < limits.minimum:
        why = f"raised to the provider minimum of {limits.minimum}s"
        return TtlDecision(asked, limits.minimum, why)
    if asked > limits.maximum:
        why = f"lowered to the provider maximum of {limits.maximum}s"
        return TtlDecision(asked, limits.maximum, why)
    return TtlDecision(asked, asked)


@dataclass(frozen=True)
class IssueRequest:
    """One credential to issue for one lease.

    ``web_identity_token`` is the caller's verified OIDC token, passed only to providers that
    exchange it upstream (AWS web identity mode); it is never shown in a repr.
    """

    grant_name: str
    settings: Mapping[str, Any]
    lease_id: str
    ttl_seconds: int = DEFAULT_TTL_SECONDS
    session_name: str = "airlock"
    tags: Mapping[str, str] = field(default_factory=dict)
    web_identity_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class IssuedCredential:
    """A credential as issued. ``values`` are secrets: never logged, never in a repr."""

    lease_id: str
    grant_name: str
    provider: str
    values: Mapping[str, str] = field(repr=False)
    expires_at: datetime
    revoke_handle: Mapping[str, str] = field(default_factory=dict)
    ttl: TtlDecision | None = None

    def fingerprints(self) -> dict[str, str]:
        """Name → SHA-256 hex of each value: what a ledger may store instead of the value."""
        return {k: hashlib.sha256(v.encode()).hexdigest() for k, v in self.values.items()}


def describe_validation_error(exc: ValidationError) -> str:
    """Each problem as ``path: reason``, without the offending input (it may be a secret)."""
    parts = []
    for err in exc.errors(include_input=False, include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


class CredentialProvider(ABC):
    """A source of short-lived credentials. One instance per ``providers:`` entry."""

    name: ClassVar[str]
    settings_model: ClassVar[type[BaseModel]]
    config_model: ClassVar[type[BaseModel]]
    ttl_limits: ClassVar[TtlLimits] = TtlLimits(minimum=60, maximum=3600)

    def __init__(self, config: BaseModel) -> None:
        """``config`` is an instance of ``config_model`` (subclasses narrow ``_config``'s type)."""
        self._config = config

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        """Build the provider from its ``providers:`` entry in the broker config."""
        return cls(cls.parse_config(config))

    @abstractmethod
    def issue(self, request: IssueRequest) -> IssuedCredential:
        """Create one credential; on failure nothing stays half-created upstream."""

    @abstractmethod
    def revoke(self, lease_id: str, revoke_handle: Mapping[str, str]) -> None:
        """Revoke a credential issued earlier. Idempotent: revoking twice is not an error."""

    def validate_grant(self, settings: Mapping[str, Any]) -> BaseModel:
        """Validate a grant's provider fields; problems raise ConfigError naming each field."""
        return _validate(self.settings_model, settings, f"{self.name} grant")

    @classmethod
    def parse_config(cls, config: Mapping[str, Any]) -> BaseModel:
        """Validate a ``providers:`` entry against ``config_model``."""
        return _validate(cls.config_model, config, f"{cls.name} provider config")


def _validate(model: type[BaseModel], data: Mapping[str, Any], what: str) -> BaseModel:
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(f"invalid {what}: {describe_validation_error(exc)}") from None


def get_provider(name: str) -> type[CredentialProvider]:
    """The provider class for ``name``; ConfigError if unknown or its library is missing."""
    try:
        module_name, class_name, extra = _IMPLEMENTATIONS[name]
    except KeyError:
        known = ", ".join(sorted(_IMPLEMENTATIONS))
        raise ConfigError(f"unknown credential provider {name!r}; known: {known}") from None
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"the {name} provider needs the {extra} package, which is not installed",
            hint="pip install 'airlock-ci[broker]'",
        ) from exc
    cls: type[CredentialProvider] = getattr(module, class_name)
    return cls


def provider_registry() -> dict[str, type[CredentialProvider]]:
    """Every provider whose library is installed, by name."""
    found: dict[str, type[CredentialProvider]] = {}
    for name in _IMPLEMENTATIONS:
        try:
            found[name] = get_provider(name)
        except ConfigError:
            continue
    return found
