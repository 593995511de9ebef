"""The static allowlist entry for one OIDC issuer, validated when it is built.

An :class:`IssuerConfig` is checked once, at config load: an insecure choice (a symmetric or
``none`` algorithm, GitHub's default audience, a plain-HTTP issuer off the loopback interface)
raises :class:`~airlock.errors.ConfigError` there, never at token time.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from airlock.errors import ConfigError

__all__ = ["ALLOWED_ALGORITHMS", "IssuerConfig", "is_loopback_host", "origin_of"]

# Asymmetric JWS algorithms only: an HMAC key would have to be shared with the verifier, and
# "none" is no signature at all.
ALLOWED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# GitHub Actions uses the owner URL as the audience when a job asks for none: any workflow of
# that owner gets such a token for free, so it proves nothing about this broker being the target.
_GITHUB_DEFAULT_AUDIENCE = re.compile(r"^https?://(www\.)?github\.com(/|$)", re.IGNORECASE)
_MAX_TOKEN_AGE_LIMIT = 12 * 3600
_DEFAULT_PORTS = {"https": 443, "http": 80}
_MAX_LEEWAY = 300


def is_loopback_host(host: str | None) -> bool:
    """True for ``localhost`` and loopback IP literals (the only hosts allowed over plain HTTP)."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def origin_of(url: str) -> tuple[str, str, int | None]:
    """``(scheme, host, port)`` of a URL, lower-cased, default port filled in, for same-origin
    comparisons (``https://h`` and ``https://h:443`` are the same origin)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:
        port = -1  # not a valid port: never equal to a real origin's
    return scheme, (parts.hostname or "").lower(), port


@dataclass(frozen=True)
class IssuerConfig:
    """One trusted issuer: tokens must carry ``iss == url`` and ``aud == audience`` exactly.

    ``max_token_age`` and ``leeway`` are in seconds. ``max_token_age`` bounds ``now - iat``: a
    token leaked from an old job log is refused even if its ``exp`` is far away.
    """

    name: str
    url: str
    audience: str
    algorithms: tuple[str, ...] = ("RS256",)
    max_token_age: int = 600
    leeway: int = 60

    def __post_init__(self) -> None:
        problems = [
            *_name_problems(self.name),
            *_url_problems(self.url),
            *_audience_problems(self.audience),
            *_algorithm_problems(self.algorithms),
            *_timing_problems(self.max_token_age, self.leeway),
        ]
        if problems:
            raise ConfigError(f"issuer {self.name!r}: " + "; ".join(problems))

    @property
    def allows_plain_http(self) -> bool:
        """Plain HTTP is accepted only for an issuer on the loopback interface (tests, dev)."""
        return is_loopback_host(urlsplit(self.url).hostname)


def _name_problems(name: str) -> list[str]:
    if _NAME_RE.match(name):
        return []
    return ["name must be 1-63 characters of a-z, 0-9, '-', '_' and start with a letter or digit"]


def _url_problems(url: str) -> list[str]:
    parts = urlsplit(url)
    if parts.scheme == "http" and is_loopback_host(parts.hostname):
        scheme_ok = True
    else:
        scheme_ok = parts.scheme == "https"
    problems = []
    if not scheme_ok:
        problems.append("url must be https:// (plain http only for a loopback issuer)")
    if not parts.hostname:
        problems.append("url must name a host")
    if parts.query or parts.fragment or parts.username or parts.password:
        problems.append("url must not carry a query, fragment or credentials")
    return problems


def _audience_problems(audience: str) -> list[str]:
    if not audience.strip():
        return ["audience must be set to a value unique to this broker"]
    if _GITHUB_DEFAULT_AUDIENCE.match(audience):
        return [
            "audience looks like GitHub's default audience (https://github.com/<owner>), which "
            "every workflow of the owner receives; use a value unique to this broker, such as "
            "its URL"
        ]
    return []


def _algorithm_problems(algorithms: tuple[str, ...]) -> list[str]:
    if not algorithms:
        return ["algorithms must list at least one algorithm"]
    bad = sorted(set(algorithms) - ALLOWED_ALGORITHMS)
    if bad:
        return [f"algorithms {bad} not allowed; choose from {sorted(ALLOWED_ALGORITHMS)}"]
    return []


def _timing_problems(max_token_age: int, leeway: int) -> list[str]:
    problems = []
    if not 0 < max_token_age <= _MAX_TOKEN_AGE_LIMIT:
        problems.append(f"max_token_age must be between 1 s and {_MAX_TOKEN_AGE_LIMIT} s")
    if not 0 <= leeway <= _MAX_LEEWAY:
        problems.append(f"leeway must be between 0 and {_MAX_LEEWAY} s")
    return problems
