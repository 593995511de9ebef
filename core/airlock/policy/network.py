"""The ``network:`` section of ``airlock.yaml``: where the agent may connect through the egress
proxy, and how a connection attempt is judged.

    network:
      bundles: [github, pypi]                  # named host sets shipped in code (BUNDLES)
      allow:
        - {id: internal-api, host: api.internal.example, ports: [8443]}
        - {id: mirror-read, host: "*.mirror.example", methods: [GET, HEAD], paths: ["/pub/**"]}
        - {id: upload, host: upload.example, action: require_approval}
      deny:
        - {id: no-gist, host: gist.github.com}

Default deny: an attempt no rule matches is refused (rule id ``airlock.default-deny``). Every
matching rule counts and the strictest action wins (deny > require_approval > allow). A host is
an exact name, ``*.suffix`` (any name ending in ``.suffix``, not ``suffix`` itself) or an IP
literal (matched exactly, never by a wildcard). ``methods`` and ``paths`` only exist for plain
HTTP: over HTTPS the proxy sees the host and port only, so a rule with them never matches a
CONNECT tunnel.

The file model is pydantic; :meth:`NetworkPolicy.compiled` turns it once into frozen
:class:`EgressRules` that the proxy asks (:meth:`EgressRules.decide`). Gateway upstream hosts
(set by the :class:`~airlock.policy.Policy` that holds this section) are always denied with a
rule that names the gateway: reaching them through the proxy would bypass the gateway.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictInt,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from airlock.policy.guardrails import _glob_regex

__all__ = [
    "BUNDLES",
    "DEFAULT_DENY_RULE",
    "DEFAULT_PORTS",
    "EgressRule",
    "EgressRules",
    "NetAction",
    "NetDecision",
    "NetworkAllowRule",
    "NetworkDenyRule",
    "NetworkPolicy",
    "host_matches",
    "normalize_host",
]

NetAction = Literal["allow", "deny", "require_approval"]
_RANK: dict[str, int] = {"allow": 0, "require_approval": 1, "deny": 2}
DEFAULT_PORTS: tuple[int, ...] = (80, 443)
DEFAULT_DENY_RULE = "airlock.default-deny"
_RULE_ID_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
_RULE_ID_RE = re.compile(_RULE_ID_PATTERN)
_LABEL_RE = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_METHOD_RE = re.compile(r"^[A-Z]{1,20}$")

BUNDLES: Mapping[str, tuple[str, ...]] = {
    "github": (
        "github.com",
        "*.github.com",
        "*.githubusercontent.com",
        "ghcr.io",
        "*.ghcr.io",
    ),
    "gitlab": ("gitlab.com", "*.gitlab.com", "registry.gitlab.com"),
    "pypi": ("pypi.org", "files.pythonhosted.org"),
    "npm": ("registry.npmjs.org", "registry.yarnpkg.com"),
    "go": ("proxy.golang.org", "sum.golang.org"),
    "crates": ("crates.io", "index.crates.io", "static.crates.io"),
    "rubygems": ("rubygems.org", "index.rubygems.org"),
    "anthropic": ("api.anthropic.com",),
    "openai": ("api.openai.com",),
}
"""Named host sets for ``network.bundles`` (HTTPS, port 443 only). docs/egress.md lists them."""


def normalize_host(host: str) -> str:
    """Lower-case, without a trailing dot and IPv6 brackets: the form rules compare."""
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _host_problem(value: str) -> str | None:
    """What is wrong with host pattern ``value``, or None."""
    if "://" in value:
        return "give a host name, not a URL: drop the scheme (e.g. api.example.com)"
    if "/" in value:
        return "give a host name only; paths go in paths: (plain HTTP only)"
    if "@" in value or any(c.isspace() for c in value):
        return "a host name has no spaces or '@'"
    if _ip(normalize_host(value)) is not None:
        return None
    if "*" in value:
        rest = value[2:] if value.startswith("*.") else None
        if rest is None or "*" in rest:
            return "a wildcard is allowed only as a leading '*.' (e.g. *.example.com)"
        if not rest:
            return "'*.' needs a domain after it (e.g. *.example.com)"
        if _looks_numeric(rest):
            return "wildcards cannot cover IP addresses; list each address exactly"
        value = rest
    if ":" in value:
        return "give the port in ports:, not in the host (IPv6 literals are written bare)"
    labels = normalize_host(value).split(".")
    if not all(_LABEL_RE.match(label) for label in labels):
        return "not a valid host name (letters, digits, '-' and '.' labels)"
    return None


def _looks_numeric(text: str) -> bool:
    return all(part.isdigit() for part in text.split(".") if part)


@functools.lru_cache(maxsize=4096)
def host_matches(pattern: str, host: str) -> bool:
    """True when ``host`` (normalized) is covered by ``pattern`` (exact, ``*.suffix`` or IP)."""
    pattern, host = normalize_host(pattern), normalize_host(host)
    if pattern.startswith("*."):
        return _ip(host) is None and host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    pattern_ip, host_ip = _ip(pattern), _ip(host)
    if pattern_ip is not None or host_ip is not None:
        return pattern_ip is not None and pattern_ip == host_ip
    return pattern == host


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class _NetworkRule(_Section):
    id: str = Field(
        description="Stable rule id shown in net.connect events and denials.",
        json_schema_extra={"pattern": _RULE_ID_PATTERN},
    )
    host: str = Field(
        min_length=1,
        description="Exact host name, '*.suffix' (names under suffix, not suffix itself) or an "
        "IP literal (exact).",
    )
    ports: tuple[StrictInt, ...] = Field(
        default=DEFAULT_PORTS,
        min_length=1,
        description="Destination ports (default 80 and 443).",
    )
    methods: tuple[str, ...] = Field(
        default=(),
        description="Plain HTTP only: upper-case methods (empty: any). Never matches HTTPS.",
    )
    paths: tuple[str, ...] = Field(
        default=(),
        description="Plain HTTP only: path globs from '/': '*' within a segment, '**' across. "
        "Never matches HTTPS.",
    )

    @field_validator("id")
    @classmethod
    def _id_shape(cls, value: str) -> str:
        if not _RULE_ID_RE.match(value) or value.startswith(("airlock.", "bundle.", "gateway.")):
            raise PydanticCustomError(
                "airlock_rule_id",
                "rule id '{id}' must be 1-64 of a-z 0-9 - _ . starting with a letter or digit, "
                "and not start with airlock., bundle. or gateway.",
                {"id": value[:64]},
            )
        return value

    @field_validator("host")
    @classmethod
    def _host_shape(cls, value: str) -> str:
        problem = _host_problem(value)
        if problem is not None:
            raise PydanticCustomError(
                "airlock_host_pattern",
                "host '{host}': {why}",
                {"host": value[:100], "why": problem},
            )
        return normalize_host(value)

    @field_validator("ports")
    @classmethod
    def _port_range(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(not 1 <= port <= 65535 for port in value):
            raise PydanticCustomError("airlock_port", "ports are 1-65535")
        return value

    @field_validator("methods")
    @classmethod
    def _methods_shape(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for method in value:
            if not _METHOD_RE.match(method) or method == "CONNECT":
                raise PydanticCustomError(
                    "airlock_http_method",
                    "'{m}' is not an upper-case HTTP method (CONNECT is decided by host and port)",
                    {"m": method[:20]},
                )
        return value

    @field_validator("paths")
    @classmethod
    def _paths_shape(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not path.startswith("/") for path in value):
            raise PydanticCustomError("airlock_http_path", "path globs start with '/'")
        return value


class NetworkAllowRule(_NetworkRule):
    """A host the agent may reach (or may reach once a human approves)."""

    action: Literal["allow", "require_approval"] = Field(
        default="allow", description="allow, or require_approval (the approvals: backend asks)."
    )
    local_addresses: StrictBool = Field(
        default=False,
        description="Let this host resolve to addresses that are not public (loopback, "
        "private 10/8, 172.16/12, 192.168/16, CGNAT 100.64/10, link-local, ULA fc00::/7, "
        "cloud metadata, and their IPv6 forms), which are refused otherwise: Airlock's own "
        "listeners, the runner's network and cloud metadata live there.",
    )


class NetworkDenyRule(_NetworkRule):
    """A host refused even when an allow rule or a bundle covers it."""


class NetworkPolicy(_Section):
    """The egress proxy's allowlist. Present in a policy ⇒ ``airlock run`` starts the proxy."""

    bundles: tuple[str, ...] = Field(
        default=(), description="Named host sets: " + ", ".join(sorted(BUNDLES)) + "."
    )
    allow: tuple[NetworkAllowRule, ...] = Field(default=(), description="Allowed hosts.")
    deny: tuple[NetworkDenyRule, ...] = Field(default=(), description="Refused hosts.")
    _gateway_hosts: dict[str, str] = PrivateAttr(default_factory=dict)
    _compiled: EgressRules | None = PrivateAttr(default=None)

    @field_validator("bundles")
    @classmethod
    def _known_bundles(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [name for name in value if name not in BUNDLES]
        if unknown:
            raise PydanticCustomError(
                "airlock_bundle",
                "unknown bundle {names}; known bundles: {known} (or list hosts under allow:)",
                {"names": ", ".join(repr(n[:40]) for n in unknown), "known": ", ".join(BUNDLES)},
            )
        return value

    @model_validator(mode="after")
    def _ids_unique(self) -> NetworkPolicy:
        seen: set[str] = set()
        for rule in (*self.allow, *self.deny):
            if rule.id in seen:
                raise PydanticCustomError(
                    "airlock_duplicate", "network rule id '{id}' is used twice", {"id": rule.id}
                )
            seen.add(rule.id)
        return self

    def bind_gateways(self, upstream_hosts: Mapping[str, str]) -> str | None:
        """Record the gateways' upstream hosts (gateway name → host); return a problem when an
        allow rule names one of them (it would bypass that gateway), else None."""
        for rule in self.allow:
            for gateway, host in upstream_hosts.items():
                if host_matches(rule.host, host):
                    return (
                        f"allow rule {rule.id!r} covers {host}, the upstream of gateway "
                        f"{gateway!r}: the agent must go through that gateway (its "
                        f"{gateway.upper().replace('-', '_')}_URL), so remove {host} from the rule"
                    )
        self._gateway_hosts = dict(upstream_hosts)
        self._compiled = None
        return None

    def compiled(self) -> EgressRules:
        """The frozen rules the proxy asks; built once per policy."""
        if self._compiled is None:
            self._compiled = _compile(self, self._gateway_hosts)
        return self._compiled


@dataclass(frozen=True)
class EgressRule:
    """One compiled rule."""

    id: str
    host: str
    ports: frozenset[int]
    action: NetAction
    methods: frozenset[str] = frozenset()
    paths: tuple[re.Pattern[str], ...] = ()
    local_addresses: bool = False
    hint: str = ""

    @property
    def http_only(self) -> bool:
        return bool(self.methods or self.paths)

    def matches(self, host: str, port: int, method: str | None, path: str | None) -> bool:
        if port not in self.ports or not host_matches(self.host, host):
            return False
        if not self.http_only:
            return True
        if method is None or path is None:  # a CONNECT tunnel: no method or path to check
            return False
        if self.methods and method not in self.methods:
            return False
        return not self.paths or any(p.fullmatch(path) for p in self.paths)


@dataclass(frozen=True)
class NetDecision:
    """The outcome for one attempt: the action, the rule that decided, and what to tell the
    agent (short, no secrets) when it is refused."""

    action: NetAction
    rule_id: str
    local_addresses: bool = False
    hint: str = ""


@dataclass(frozen=True)
class EgressRules:
    """Compiled ``network:``: :meth:`decide` judges one attempt (sans-I/O)."""

    rules: tuple[EgressRule, ...]

    def decide(
        self, host: str, port: int, method: str | None = None, path: str | None = None
    ) -> NetDecision:
        host = normalize_host(host)
        matching = [r for r in self.rules if r.matches(host, port, method, path)]
        if not matching:
            return NetDecision("deny", DEFAULT_DENY_RULE, hint=_default_hint(host, port))
        worst = max(_RANK[r.action] for r in matching)
        chosen = [r for r in matching if _RANK[r.action] == worst]
        return NetDecision(
            chosen[0].action,
            chosen[0].id,
            local_addresses=all(r.local_addresses for r in chosen),
            hint=chosen[0].hint,
        )

    def decide_readings(
        self, host: str, port: int, method: str, paths: tuple[str, ...]
    ) -> NetDecision:
        """The strictest decision over every reading of a plain-HTTP path."""
        decisions = [self.decide(host, port, method, path) for path in paths or ("/",)]
        return max(decisions, key=lambda d: _RANK[d.action])

    def allowlist(self) -> list[str]:
        """Human lines for the job summary: ``rule-id: host ports (action)``."""
        return [
            f"{r.id}: {r.host} {','.join(str(p) for p in sorted(r.ports))} ({r.action})"
            for r in self.rules
            if not r.id.startswith("gateway.")
        ]


def _default_hint(host: str, port: int) -> str:
    return (
        f"no network rule allows {host}:{port}; add to the policy's network.allow: "
        f"{{id: ..., host: {host}, ports: [{port}]}}"
    )


def _path_patterns(paths: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    return tuple(_glob_regex(path, "/", True) for path in paths)


_ALL_PORTS = frozenset(range(1, 65536))


def _rule(
    rule: _NetworkRule, action: NetAction, *, local: bool = False, hint: str = ""
) -> EgressRule:
    return EgressRule(
        rule.id,
        rule.host,
        frozenset(rule.ports),
        action,
        frozenset(rule.methods),
        _path_patterns(rule.paths),
        local,
        hint,
    )


def _compile(policy: NetworkPolicy, gateways: Mapping[str, str]) -> EgressRules:
    rules: list[EgressRule] = []
    for name, host in sorted(gateways.items()):
        hint = f"{host} is the upstream of gateway {name!r}: use that gateway's address instead"
        rules.append(EgressRule(f"gateway.{name}", host, _ALL_PORTS, "deny", hint=hint))
    for deny in policy.deny:
        hint = f"refused by network.deny rule {deny.id!r}"
        rules.append(_rule(deny, "deny", hint=hint))
    for allow in policy.allow:
        rules.append(_rule(allow, allow.action, local=allow.local_addresses))
    for bundle in policy.bundles:
        for host in BUNDLES[bundle]:
            rules.append(EgressRule(f"bundle.{bundle}", host, frozenset({443}), "allow"))
    return EgressRules(tuple(rules))
