"""Fetch and cache an issuer's signing keys (OIDC discovery, then JWKS).

Fetches are defensive: a timeout, a response size cap, redirects followed only within the same
origin, ``jwks_uri`` required on the issuer's own host. Keys are cached per issuer for ``ttl``
seconds. A token with an unknown ``kid`` triggers a refresh that is single-flight (N concurrent
callers cause one fetch) and rate-limited by ``refresh_cooldown`` (a client spraying random
``kid`` values cannot make the broker hammer the issuer: at most one fetch per cooldown).
Failures fail closed with :class:`~airlock.oidc.errors.IssuerUnavailable`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import httpx
import jwt

from airlock.oidc.errors import IssuerUnavailable, UnknownSigningKey
from airlock.oidc.issuers import IssuerConfig, is_loopback_host, origin_of

__all__ = ["JWKSCache", "SigningKey"]

log = logging.getLogger("airlock.oidc")

_MAX_REDIRECTS = 3
_MAX_KEYS = 64
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
_MIN_RSA_BITS = 2048


@dataclass(frozen=True)
class SigningKey:
    """A public key from a JWKS. ``alg`` is the JWK's own ``alg`` member when it has one."""

    kid: str
    kty: str
    alg: str | None
    key: Any = field(repr=False)


@dataclass(frozen=True)
class _KeySet:
    keys: Mapping[str, SigningKey]
    fetched_at: float


@dataclass
class _IssuerState:
    lock: threading.Lock = field(default_factory=threading.Lock)
    keyset: _KeySet | None = None
    jwks_uri: str | None = None
    discovered_at: float = 0.0
    last_attempt: float | None = None
    error: IssuerUnavailable | None = None
    inflight: threading.Event | None = None


class JWKSCache:
    """Signing keys of every configured issuer, fetched lazily and cached. Thread-safe."""

    def __init__(
        self,
        *,
        http: httpx.Client | None = None,
        timeout: float = 5.0,
        max_bytes: int = 256 * 1024,
        ttl: float = 900.0,
        refresh_cooldown: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl <= 0 or refresh_cooldown < 0 or timeout <= 0 or max_bytes <= 0:
            raise ValueError("ttl, timeout and max_bytes must be positive, cooldown not negative")
        self._owns_http = http is None
        self._http = http or httpx.Client(timeout=timeout, follow_redirects=False)
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._ttl = ttl
        self._cooldown = refresh_cooldown
        self._clock = clock
        self._states: dict[str, _IssuerState] = {}
        self._states_lock = threading.Lock()

    def close(self) -> None:
        """Close the HTTP client (unless it was passed in: its owner closes it)."""
        if self._owns_http:
            self._http.close()

    def get_key(self, issuer: IssuerConfig, kid: str) -> SigningKey:
        """The key ``kid`` of ``issuer``, refreshing the JWKS (single-flight) when unknown."""
        state = self._state(issuer)
        keyset = self._fresh(state)
        if keyset is None or kid not in keyset.keys:
            self._refresh(issuer, state)
            keyset = self._fresh(state)
        if keyset is None:
            raise state.error or IssuerUnavailable(f"no signing keys for issuer {issuer.name}")
        key = keyset.keys.get(kid)
        if key is None:
            raise UnknownSigningKey(
                f"kid {kid[:80]!r} is not in the JWKS of issuer {issuer.name} "
                f"(known: {sorted(keyset.keys)})"
            )
        return key

    def _state(self, issuer: IssuerConfig) -> _IssuerState:
        with self._states_lock:
            return self._states.setdefault(issuer.url, _IssuerState())

    def _fresh(self, state: _IssuerState) -> _KeySet | None:
        keyset = state.keyset
        if keyset is None or self._clock() - keyset.fetched_at >= self._ttl:
            return None
        return keyset

    def _refresh(self, issuer: IssuerConfig, state: _IssuerState) -> None:
        with state.lock:
            now = self._clock()
            if state.inflight is not None:
                event, leader = state.inflight, False
            elif state.last_attempt is not None and now - state.last_attempt < self._cooldown:
                return  # cooling down: answer from what we have, do not call the issuer
            else:
                event, leader = threading.Event(), True
                state.inflight, state.last_attempt = event, now
        if not leader:
            event.wait(self._timeout * 4)
            return
        try:
            self._fetch_into(issuer, state)
        finally:
            with state.lock:
                state.inflight = None
            event.set()

    def _fetch_into(self, issuer: IssuerConfig, state: _IssuerState) -> None:
        try:
            jwks_uri = self._jwks_uri(issuer, state)
            keys = _parse_jwks(self._get_json(issuer, jwks_uri), issuer.name)
        except IssuerUnavailable as exc:
            log.warning("oidc: refreshing keys of issuer %s failed: %s", issuer.name, exc.detail)
            state.error = exc
            return
        state.keyset = _KeySet(keys=keys, fetched_at=self._clock())
        state.error = None
        log.info("oidc: issuer %s publishes keys %s", issuer.name, sorted(keys))

    def _jwks_uri(self, issuer: IssuerConfig, state: _IssuerState) -> str:
        if state.jwks_uri is not None and self._clock() - state.discovered_at < self._ttl:
            return state.jwks_uri
        url = issuer.url.rstrip("/") + "/.well-known/openid-configuration"
        document = self._get_json(issuer, url)
        jwks_uri = _check_discovery(document, issuer)
        state.jwks_uri, state.discovered_at = jwks_uri, self._clock()
        return jwks_uri

    def _get_json(self, issuer: IssuerConfig, url: str) -> dict[str, Any]:
        body = self._get_bytes(issuer, url)
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise IssuerUnavailable(f"{url} did not return JSON") from exc
        if not isinstance(document, dict):
            raise IssuerUnavailable(f"{url} did not return a JSON object")
        return document

    def _get_bytes(self, issuer: IssuerConfig, url: str) -> bytes:
        origin = origin_of(issuer.url)
        for _ in range(_MAX_REDIRECTS + 1):
            _check_same_origin(url, origin, issuer)
            try:
                with self._http.stream("GET", url, timeout=self._timeout) as response:
                    if response.is_redirect:
                        url = urljoin(url, response.headers.get("location", ""))
                        continue
                    if response.status_code != 200:
                        raise IssuerUnavailable(f"GET {url} returned HTTP {response.status_code}")
                    return _read_capped(response, self._max_bytes, url, self._timeout * 2)
            except httpx.HTTPError as exc:
                raise IssuerUnavailable(f"GET {url} failed: {type(exc).__name__}") from exc
        raise IssuerUnavailable(f"GET {issuer.url}: more than {_MAX_REDIRECTS} redirects")


def _check_same_origin(url: str, origin: tuple[str, str, int | None], issuer: IssuerConfig) -> None:
    scheme, host, port = origin_of(url)
    if (host, port) != origin[1:]:
        raise IssuerUnavailable(
            f"{url} is not on the host of issuer {issuer.name} ({issuer.url}); refused"
        )
    if scheme != "https" and not (scheme == "http" and is_loopback_host(host)):
        raise IssuerUnavailable(f"{url} is not https; refused")


def _read_capped(response: httpx.Response, max_bytes: int, url: str, budget: float) -> bytes:
    deadline = time.monotonic() + budget  # a server trickling bytes must not hold us forever
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise IssuerUnavailable(f"{url} answered {declared} bytes, more than {max_bytes}")
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise IssuerUnavailable(f"{url} answered more than {max_bytes} bytes")
        if time.monotonic() > deadline:
            raise IssuerUnavailable(f"{url} took longer than {budget:.0f} s to answer")
        chunks.append(chunk)
    return b"".join(chunks)


def _check_discovery(document: Mapping[str, Any], issuer: IssuerConfig) -> str:
    if document.get("issuer") != issuer.url:
        raise IssuerUnavailable(
            f"discovery document of {issuer.url} names issuer {str(document.get('issuer'))[:200]!r}"
        )
    jwks_uri = document.get("jwks_uri")
    if not isinstance(jwks_uri, str) or not jwks_uri:
        raise IssuerUnavailable(f"discovery document of {issuer.url} has no jwks_uri")
    _check_same_origin(jwks_uri, origin_of(issuer.url), issuer)
    return jwks_uri


def _parse_jwks(document: Mapping[str, Any], issuer_name: str) -> dict[str, SigningKey]:
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise IssuerUnavailable(f"JWKS of issuer {issuer_name} has no 'keys' list")
    keys: dict[str, SigningKey] = {}
    duplicates: set[str] = set()
    for entry in entries[:_MAX_KEYS]:
        key = _parse_jwk(entry, issuer_name)
        if key is None:
            continue
        if key.kid in keys:
            duplicates.add(key.kid)
        keys[key.kid] = key
    for kid in duplicates:  # ambiguous: which key is meant cannot be decided, so neither is
        log.warning("oidc: issuer %s publishes kid %r twice; ignoring it", issuer_name, kid)
        del keys[kid]
    return keys


def _parse_jwk(entry: Any, issuer_name: str) -> SigningKey | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
        return None
    kid, kty = entry["kid"], entry.get("kty")
    if kty not in ("RSA", "EC", "OKP") or entry.get("use", "sig") != "sig":
        return None  # "oct" (symmetric) keys and encryption keys are never verification keys
    public = {k: v for k, v in entry.items() if k not in _PRIVATE_MEMBERS}
    try:
        key = jwt.PyJWK(public).key
    except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
        log.warning("oidc: issuer %s key %r unusable: %s", issuer_name, kid, type(exc).__name__)
        return None
    if kty == "RSA" and key.key_size < _MIN_RSA_BITS:
        log.warning("oidc: issuer %s key %r is shorter than 2048 bits; ignored", issuer_name, kid)
        return None
    alg = entry.get("alg")
    return SigningKey(kid=kid, kty=kty, alg=alg if isinstance(alg, str) else None, key=key)
