"""Why an OIDC token was refused, in two tiers.

``str(err)`` is the coarse, caller-safe reason (what the CI job sees); ``err.detail`` is the
precise one for the broker log. ``err.reason`` is a stable code (docs/oidc.md lists them) used in
metrics, events and tests. Neither tier ever contains the token or its signature.

    PolicyDenied (airlock.errors)
     └── OIDCError                    the token is refused                          → 81
          ├── TokenMalformed          token-too-large, malformed, unsupported-header,
          │                           missing-claim, bad-claim-type
          ├── IssuerNotAllowed        issuer-not-allowed (checked before any fetch)
          ├── AlgorithmNotAllowed     alg-not-allowed
          ├── UnknownSigningKey       unknown-key (kid absent from the issuer's JWKS)
          ├── BadSignature            bad-signature
          ├── BadAudience             bad-audience
          ├── TokenNotCurrent         expired, not-yet-valid, issued-in-future, token-too-old
          └── TokenReplayed           replayed (jti already used)
    InfrastructureUnavailable (airlock.errors)
     └── IssuerUnavailable            issuer-unavailable: discovery/JWKS unreachable or bad → 85
"""

from __future__ import annotations

from airlock.errors import InfrastructureUnavailable, PolicyDenied

__all__ = [
    "AlgorithmNotAllowed",
    "BadAudience",
    "BadSignature",
    "IssuerNotAllowed",
    "IssuerUnavailable",
    "OIDCError",
    "TokenMalformed",
    "TokenNotCurrent",
    "TokenReplayed",
    "UnknownSigningKey",
]

_PUBLIC = {
    "token-too-large": "the token is larger than the broker accepts",
    "malformed": "the token is not a well-formed signed JWT",
    "unsupported-header": "the token uses a JOSE header the broker does not support",
    "missing-claim": "the token lacks a required claim",
    "bad-claim-type": "a token claim has the wrong type",
    "issuer-not-allowed": "the token's issuer is not trusted by this broker",
    "alg-not-allowed": "the token's signing algorithm is not allowed for its issuer",
    "unknown-key": "the token was signed with a key the issuer does not publish",
    "bad-signature": "the token's signature does not verify",
    "bad-audience": "the token's audience is not this broker's",
    "expired": "the token has expired",
    "not-yet-valid": "the token is not valid yet",
    "issued-in-future": "the token claims to be issued in the future",
    "token-too-old": "the token was issued too long ago",
    "replayed": "the token was already used",
    "issuer-unavailable": "the token's issuer could not be reached to fetch its signing keys",
}


class OIDCError(PolicyDenied):
    """A token was refused. ``reason`` is a stable code, ``detail`` the precise cause (for logs)."""

    reason = "malformed"
    default_hint = "request a fresh token from the CI platform with the broker's audience"

    def __init__(self, detail: str, *, reason: str | None = None, hint: str | None = None):
        code = reason or type(self).reason
        super().__init__(f"OIDC token refused ({code}): {_PUBLIC[code]}", hint=hint)
        self.reason = code
        self.detail = detail


class TokenMalformed(OIDCError):
    reason = "malformed"


class IssuerNotAllowed(OIDCError):
    reason = "issuer-not-allowed"
    default_hint = "the broker trusts only the issuers in its config (issuers:)"


class AlgorithmNotAllowed(OIDCError):
    reason = "alg-not-allowed"


class UnknownSigningKey(OIDCError):
    reason = "unknown-key"


class BadSignature(OIDCError):
    reason = "bad-signature"


class BadAudience(OIDCError):
    reason = "bad-audience"
    default_hint = "request the token with the broker's audience (airlock credentials does this)"


class TokenNotCurrent(OIDCError):
    reason = "expired"
    default_hint = "request a fresh token right before the exchange; check the runner's clock"


class TokenReplayed(OIDCError):
    reason = "replayed"
    default_hint = "each token is single-use: request a fresh token for each exchange"


class IssuerUnavailable(InfrastructureUnavailable):
    """Discovery or JWKS could not be fetched or made no sense; the broker fails closed."""

    reason = "issuer-unavailable"
    default_hint = "retry later; the broker operator should check that the issuer URL is reachable"

    def __init__(self, detail: str, *, hint: str | None = None):
        super().__init__(
            f"OIDC token refused (issuer-unavailable): {_PUBLIC[self.reason]}", hint=hint
        )
        self.detail = detail
