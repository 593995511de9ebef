"""Credential providers: one interface (``interface.py``), one module per upstream."""

from airlock.providers.interface import (
    CredentialProvider,
    IssuedCredential,
    IssueRequest,
    ProviderError,
    TtlDecision,
    TtlLimits,
    clamp_ttl,
    get_provider,
    provider_registry,
)

__all__ = [
    "CredentialProvider",
    "IssueRequest",
    "IssuedCredential",
    "ProviderError",
    "TtlDecision",
    "TtlLimits",
    "clamp_ttl",
    "get_provider",
    "provider_registry",
]
