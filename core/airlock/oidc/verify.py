"""Verify a CI job's OIDC token: :class:`TokenVerifier`.

The checks run in an order chosen so that an attacker learns little and costs us little:

1. size cap, then structure (three base64url JSON segments, a non-empty signature);
2. ``iss`` from the *unverified* payload must be in the static allowlist — before any network
   fetch, so a token naming an attacker's issuer never makes the broker call out;
3. the header ``alg`` must be one of that issuer's pinned algorithms; ``crit``/``b64`` refused;
   ``jku``, ``x5u``, ``jwk`` and ``x5c`` are ignored: keys come only from the issuer's own JWKS;
4. the key is looked up by ``kid`` in the issuer's JWKS (see :mod:`airlock.oidc.jwks`);
5. signature, then exact audience, then ``exp``/``nbf``/``iat`` with leeway and a maximum age;
6. last, the ``jti`` is consumed in the :class:`~airlock.oidc.replay.ReplayCache` — or, with
   ``consume=False``, left to the caller, who must consume ``(issuer, jti)`` until
   ``replay_until`` before acting on the token (the broker does it in the same SQL transaction
   as its rate window).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt

from airlock.errors import ConfigError
from airlock.oidc.errors import (
    AlgorithmNotAllowed,
    BadAudience,
    BadSignature,
    IssuerNotAllowed,
    TokenMalformed,
    TokenNotCurrent,
    TokenReplayed,
    UnknownSigningKey,
)
from airlock.oidc.issuers import ALLOWED_ALGORITHMS, IssuerConfig
from airlock.oidc.jwks import JWKSCache, SigningKey
from airlock.oidc.replay import InMemoryReplayCache, ReplayCache

__all__ = ["DEFAULT_MAX_TOKEN_BYTES", "TokenVerifier", "VerifiedToken", "replayed"]

DEFAULT_MAX_TOKEN_BYTES = 16 * 1024
_REFUSED_HEADERS = ("crit", "b64")
_MAX_ID_LENGTH = 256
_B64URL_ALPHABET = re.compile(r"[A-Za-z0-9_-]*")
_ALGORITHMS = {
    name: algorithm
    for name, algorithm in jwt.algorithms.get_default_algorithms().items()
    if name in ALLOWED_ALGORITHMS
}


@dataclass(frozen=True)
class VerifiedToken:
    """A token that passed every check. ``issuer`` is the configured issuer *name*."""

    issuer: str
    claims: Mapping[str, Any]
    jti: str
    expires_at: float
    issued_at: float
    algorithm: str
    key_id: str
    replay_until: float = 0.0  # keep the jti as used until then: expiry plus the leeway


@dataclass(frozen=True)
class _Parsed:
    header: dict[str, Any]
    claims: dict[str, Any]
    signed: bool


class TokenVerifier:
    """Verifies tokens from a static list of issuers. Thread-safe; one per broker process."""

    def __init__(
        self,
        issuers: Sequence[IssuerConfig],
        *,
        replay_cache: ReplayCache | None = None,
        keys: JWKSCache | None = None,
        max_token_bytes: int = DEFAULT_MAX_TOKEN_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._issuers = _index_issuers(issuers)
        self._replay = replay_cache if replay_cache is not None else InMemoryReplayCache()
        self._owns_keys = keys is None
        self._keys = keys if keys is not None else JWKSCache()
        self._max_bytes = max_token_bytes
        self._clock = clock

    def close(self) -> None:
        """Release the key cache's HTTP client (when this verifier created the cache)."""
        if self._owns_keys:
            self._keys.close()

    def __enter__(self) -> TokenVerifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def issuers(self) -> Mapping[str, IssuerConfig]:
        """The allowlist, by issuer URL."""
        return dict(self._issuers)

    def verify(self, token: str, *, consume: bool = True) -> VerifiedToken:
        """Check ``token`` and consume its ``jti``; raise an :class:`OIDCError` on any failure.

        ``consume=False`` runs every check but the single-use one: the caller then owns it and
        must record ``(issuer, jti)`` as used until ``replay_until`` (atomically, refusing the
        token when it was used) before it trusts the token."""
        parsed = self._parse(token)
        issuer = self._allowed_issuer(parsed.claims)
        alg = _check_header(parsed.header, issuer)
        if not parsed.signed:
            raise BadSignature("the signature segment is empty (stripped signature)")
        key = self._keys.get_key(issuer, parsed.header["kid"])
        claims = _verify_signature(token, key, alg)
        _check_audience(claims, issuer)
        issued_at, expires_at = self._check_times(claims, issuer)
        jti = _check_jti(claims)
        replay_until = expires_at + issuer.leeway
        if consume and not self._replay.consume(issuer.name, jti, replay_until):
            raise replayed(issuer.name, jti)
        return VerifiedToken(
            issuer=issuer.name,
            claims=claims,
            jti=jti,
            expires_at=expires_at,
            issued_at=issued_at,
            algorithm=alg,
            key_id=key.kid,
            replay_until=replay_until,
        )

    def _parse(self, token: str) -> _Parsed:
        if not isinstance(token, str):
            raise TokenMalformed(f"token is a {type(token).__name__}, not a string")
        if len(token) > self._max_bytes:
            raise TokenMalformed(
                f"token is {len(token)} bytes, the cap is {self._max_bytes}",
                reason="token-too-large",
            )
        if not token.isascii():
            raise TokenMalformed("token contains non-ASCII characters")
        segments = token.strip().split(".")
        if len(segments) != 3:
            raise TokenMalformed(f"token has {len(segments)} segments, a signed JWT has 3")
        return _Parsed(
            header=_decode_json_segment(segments[0], "header"),
            claims=_decode_json_segment(segments[1], "payload"),
            signed=bool(segments[2]),
        )

    def _allowed_issuer(self, claims: Mapping[str, Any]) -> IssuerConfig:
        iss = claims.get("iss")
        if not isinstance(iss, str):
            raise TokenMalformed("claim iss is absent or not a string", reason="missing-claim")
        issuer = self._issuers.get(iss)
        if issuer is None:
            raise IssuerNotAllowed(f"iss {iss[:200]!r} is not in the issuer allowlist")
        return issuer

    def _check_times(self, claims: Mapping[str, Any], issuer: IssuerConfig) -> tuple[float, float]:
        now, leeway = self._clock(), issuer.leeway
        exp = _required_numeric(claims, "exp")
        iat = _required_numeric(claims, "iat")
        nbf = _numeric_claim(claims, "nbf")
        if now > exp + leeway:
            raise TokenNotCurrent(f"exp {exp:.0f} is {now - exp:.0f} s ago (leeway {leeway} s)")
        if nbf is not None and nbf > now + leeway:
            raise TokenNotCurrent(
                f"nbf {nbf:.0f} is {nbf - now:.0f} s ahead (leeway {leeway} s)",
                reason="not-yet-valid",
            )
        if iat > now + leeway:
            raise TokenNotCurrent(
                f"iat {iat:.0f} is {iat - now:.0f} s ahead (leeway {leeway} s)",
                reason="issued-in-future",
            )
        if now - iat > issuer.max_token_age + leeway:
            raise TokenNotCurrent(
                f"iat {iat:.0f} is {now - iat:.0f} s ago; issuer {issuer.name} allows "
                f"{issuer.max_token_age} s (+{leeway} s leeway)",
                reason="token-too-old",
            )
        return iat, exp


def replayed(issuer_name: str, jti: str) -> TokenReplayed:
    """The error for a token whose ``jti`` was already used."""
    return TokenReplayed(f"jti {jti[:80]!r} of issuer {issuer_name} was already used")


def _index_issuers(issuers: Sequence[IssuerConfig]) -> dict[str, IssuerConfig]:
    by_url: dict[str, IssuerConfig] = {}
    names: set[str] = set()
    for issuer in issuers:
        if issuer.url in by_url or issuer.name in names:
            raise ConfigError(f"issuer {issuer.name!r} ({issuer.url}) is configured twice")
        by_url[issuer.url] = issuer
        names.add(issuer.name)
    return by_url


def _decode_json_segment(segment: str, what: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TokenMalformed(f"the {what} is not base64url: {exc}"[:300]) from None
    return _loads_object(raw, what)


def _loads_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw, object_pairs_hook=_no_duplicate_keys)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TokenMalformed(f"the {what} is not JSON: {exc}"[:300]) from None
    except RecursionError:  # a header like [[[[…]]]]: refused, never a crash
        raise TokenMalformed(f"the {what} nests too deeply") from None
    if not isinstance(value, dict):
        raise TokenMalformed(f"the {what} is not a JSON object")
    return value


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two parsers that pick different duplicates would see two different tokens.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate member {key[:40]!r}")
        result[key] = value
    return result


def _check_header(header: Mapping[str, Any], issuer: IssuerConfig) -> str:
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in issuer.algorithms:
        raise AlgorithmNotAllowed(
            f"alg {str(alg)[:20]!r} is not in the pinned list {list(issuer.algorithms)} "
            f"of issuer {issuer.name}"
        )
    refused = [name for name in _REFUSED_HEADERS if name in header]
    if refused:
        raise TokenMalformed(
            f"header parameters {refused} are not supported", reason="unsupported-header"
        )
    kid = header.get("kid")
    if not isinstance(kid, str) or not 0 < len(kid) <= _MAX_ID_LENGTH:
        raise UnknownSigningKey("header kid is absent or not a short string")
    return alg


def _verify_signature(token: str, key: SigningKey, alg: str) -> dict[str, Any]:
    """PyJWS.decode's checks on the token exactly as received, with PyJWT's algorithm objects
    (cryptography underneath), minus its per-character Python loop over every segment, which
    cost more than the RSA verification itself. Header members were checked by the caller."""
    if key.alg is not None and key.alg != alg:
        raise AlgorithmNotAllowed(f"header alg {alg} differs from key {key.kid}'s alg {key.alg}")
    try:
        signing_input, _, crypto = token.rpartition(".")
        header, _, payload_segment = signing_input.partition(".")
        _b64url_strict(header)
        payload = _b64url_strict(payload_segment)
        signature = _b64url_strict(crypto)
        algorithm = _ALGORITHMS[alg]
        verified = algorithm.verify(
            signing_input.encode(), algorithm.prepare_key(key.key), signature
        )
    except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
        raise BadSignature(
            f"signature check with key {key.kid} ({alg}) failed: {type(exc).__name__}"
        ) from None
    if not verified:
        raise BadSignature(f"signature does not verify with key {key.kid} ({alg})")
    return _loads_object(payload, "signed payload")


def _b64url_strict(segment: str) -> bytes:
    """One JWS segment, as strictly as PyJWT decodes it: base64url alphabet only, at most two
    ``=`` of padding (and then a whole number of quads), canonical (no stray trailing bits)."""
    stripped = segment.rstrip("=")
    padding = len(segment) - len(stripped)
    if padding > 2 or (padding and len(segment) % 4) or len(stripped) % 4 == 1:
        raise jwt.DecodeError("bad base64url padding")
    if not _B64URL_ALPHABET.fullmatch(stripped):
        raise jwt.DecodeError("not base64url")
    decoded = base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))
    if base64.urlsafe_b64encode(decoded).rstrip(b"=") != stripped.encode():
        raise jwt.DecodeError("not canonical base64url")
    return decoded


def _check_audience(claims: Mapping[str, Any], issuer: IssuerConfig) -> None:
    aud = claims.get("aud")
    if isinstance(aud, list) and len(aud) == 1:
        aud = aud[0]
    if aud != issuer.audience:
        shown = aud[:200] if isinstance(aud, str) else f"a {type(aud).__name__}"
        raise BadAudience(f"aud {shown!r} is not {issuer.audience!r}")


def _required_numeric(claims: Mapping[str, Any], name: str) -> float:
    value = _numeric_claim(claims, name)
    if value is None:
        raise TokenMalformed(f"claim {name} is absent", reason="missing-claim")
    return value


def _numeric_claim(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not _finite(value):
        raise TokenMalformed(
            f"claim {name} is a {type(value).__name__}, not a NumericDate", reason="bad-claim-type"
        )
    return float(value)


def _finite(value: float) -> bool:
    try:  # an int such as 10**400 does not fit a float: OverflowError, not a crash
        return math.isfinite(value) and abs(float(value)) < 1e15
    except OverflowError:
        return False


def _check_jti(claims: Mapping[str, Any]) -> str:
    jti = claims.get("jti")
    if jti is None:
        raise TokenMalformed("claim jti is absent", reason="missing-claim")
    if not isinstance(jti, str) or not 0 < len(jti) <= _MAX_ID_LENGTH:
        raise TokenMalformed("claim jti is not a short non-empty string", reason="bad-claim-type")
    return jti
