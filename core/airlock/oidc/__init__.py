"""OIDC: acquire a CI job's token (:mod:`.acquire`) and verify one (:mod:`.verify`).

Keys come from the issuer's discovery document and JWKS (:mod:`.jwks`); token ids are single-use
through a :class:`ReplayCache` (:mod:`.replay`); refusals are :class:`OIDCError` with a stable
``reason`` (:mod:`.errors`). docs/oidc.md is the user-facing description.
"""

from airlock.oidc.acquire import (
    DEFAULT_GITLAB_VARIABLE,
    acquire_github_token,
    acquire_gitlab_token,
    acquire_token,
    detect_platform,
)
from airlock.oidc.errors import (
    AlgorithmNotAllowed,
    BadAudience,
    BadSignature,
    IssuerNotAllowed,
    IssuerUnavailable,
    OIDCError,
    TokenMalformed,
    TokenNotCurrent,
    TokenReplayed,
    UnknownSigningKey,
)
from airlock.oidc.issuers import ALLOWED_ALGORITHMS, IssuerConfig
from airlock.oidc.jwks import JWKSCache, SigningKey
from airlock.oidc.replay import InMemoryReplayCache, ReplayCache
from airlock.oidc.verify import DEFAULT_MAX_TOKEN_BYTES, TokenVerifier, VerifiedToken

__all__ = [
    "ALLOWED_ALGORITHMS",
    "DEFAULT_GITLAB_VARIABLE",
    "DEFAULT_MAX_TOKEN_BYTES",
    "AlgorithmNotAllowed",
    "BadAudience",
    "BadSignature",
    "InMemoryReplayCache",
    "IssuerConfig",
    "IssuerNotAllowed",
    "IssuerUnavailable",
    "JWKSCache",
    "OIDCError",
    "ReplayCache",
    "SigningKey",
    "TokenMalformed",
    "TokenNotCurrent",
    "TokenReplayed",
    "TokenVerifier",
    "UnknownSigningKey",
    "VerifiedToken",
    "acquire_github_token",
    "acquire_gitlab_token",
    "acquire_token",
    "detect_platform",
]
