"""The session policy (``airlock.yaml``) as frozen pydantic models.

Every section is one field of :class:`Policy` with a default, so a policy of ``{}`` is valid and
means :data:`DEFAULT_POLICY`. Adding a section later (``gateways``, ``guardrails``, ...) is one
new field here. Unknown keys are refused at every level (``extra="forbid"``): a misspelt key must
never silently turn a protection off.

Validators never put the offending *value* into a message when it could be a secret (an
environment entry written as ``NAME=value`` is reported by position, not echoed). Regex text and
rule ids are configuration, not secrets, and are shown.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

import re2
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import PydanticCustomError

from airlock.policy.default import DEFAULT_DIGEST, env_pattern_matches
from airlock.policy.durations import Duration
from airlock.policy.gateways import GatewayConfig
from airlock.policy.guardrails import GuardrailDefaults, GuardrailRule
from airlock.policy.network import NetworkPolicy
from airlock.policy.sandbox import SandboxPolicy

__all__ = [
    "DEFAULT_POLICY",
    "ENV_NAME_PATTERN",
    "ENV_REMOVE_PATTERN",
    "RULE_ID_PATTERN",
    "ApprovalsPolicy",
    "CaptureSettings",
    "EnvironmentPolicy",
    "MaskPattern",
    "MaskPolicy",
    "Policy",
    "builtin_rule_ids",
    "env_pattern_matches",
]

ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
ENV_REMOVE_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*\*?$"
RULE_ID_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"

# Reserved so that a user rule can never pass for a built-in one in events and reports: the ids
# of the masker's built-in rules, its literal rules (``env:NAME``, refused by the id shape) and
# these prefixes.
_RESERVED_PREFIXES = ("builtin.", "airlock.")

_ENV_NAME_RE = re.compile(ENV_NAME_PATTERN)
_ENV_REMOVE_RE = re.compile(ENV_REMOVE_PATTERN)
_RULE_ID_RE = re.compile(RULE_ID_PATTERN)

# Probes for "this pattern can match nothing at all": a zero-length match would make the masker
# loop or mask nothing, and is always a mistake in a secret rule.
_EMPTY_PROBES = ("", "a", "A", "0", " ", "_", "-", "a b", "\n")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


def _check_env_name(value: str) -> str:
    if _ENV_NAME_RE.match(value):
        return value
    if "=" in value:
        raise PydanticCustomError(
            "airlock_env_assignment",
            "looks like NAME=value: list only the variable name, never its value "
            "(and rotate that secret if this file was shared)",
        )
    raise PydanticCustomError(
        "airlock_env_name",
        "not an environment variable name (letters, digits and _, not starting with a digit)",
    )


def _check_remove_entry(value: str) -> str:
    if _ENV_REMOVE_RE.match(value):
        return value
    if "=" in value:
        raise PydanticCustomError(
            "airlock_env_assignment",
            "looks like NAME=value: list only the variable name, never its value",
        )
    if value == "*":
        raise PydanticCustomError(
            "airlock_env_glob",
            "a bare '*' would remove every variable; list names or NAME_* prefixes",
        )
    if "*" in value:
        raise PydanticCustomError(
            "airlock_env_glob",
            "'*' is allowed only once, at the end (e.g. VAULT_*)",
        )
    raise PydanticCustomError(
        "airlock_env_name",
        "not an environment variable name or NAME_* prefix glob "
        "(letters, digits and _, not starting with a digit)",
    )


EnvName = Annotated[
    str,
    AfterValidator(_check_env_name),
    WithJsonSchema({"type": "string", "pattern": ENV_NAME_PATTERN}),
]
EnvRemoveEntry = Annotated[
    str,
    AfterValidator(_check_remove_entry),
    WithJsonSchema({"type": "string", "pattern": ENV_REMOVE_PATTERN}),
]


@functools.cache
def builtin_rule_ids() -> frozenset[str]:
    """Ids of the masker's built-in rules (``airlock.mask.rules``), which policies cannot reuse."""
    # Imported here, not at the top: the masker may come to import policy types itself.
    from airlock.mask.rules import BUILTIN_RULES

    return frozenset(rule.id for rule in BUILTIN_RULES)


def _duplicates(items: tuple[str, ...]) -> list[str]:
    seen: set[str] = set()
    dupes: list[str] = []
    for item in items:
        if item in seen and item not in dupes:
            dupes.append(item)
        seen.add(item)
    return dupes


class CaptureSettings(_Section):
    """How the agent's processes are captured."""

    exec: Literal["required", "best_effort", "off"] = Field(
        default="required",
        description=(
            "Exec tracing of every child process. required: the session fails closed when the "
            "tracer cannot run; best_effort: run without it and record that; off: do not trace."
        ),
    )
    pty: Literal["auto", "always", "never"] = Field(
        default="auto",
        description=(
            "Run the command under a pseudo-terminal. auto: when airlock's stdout is a terminal; "
            "always; never (plain pipes)."
        ),
    )


class MaskPattern(_Section):
    """One extra masking rule: an RE2 regex whose matches are replaced in all recorded output."""

    id: str = Field(
        description="Stable rule id shown in events and reports (lowercase, digits, - _ .).",
        json_schema_extra={"pattern": RULE_ID_PATTERN},
    )
    regex: str = Field(description="RE2 syntax; must not match the empty string.", min_length=1)
    max_len: StrictInt = Field(
        default=512,
        ge=1,
        le=65536,
        description="Longest match the rule can produce, in bytes; bounds streaming look-back.",
    )
    description: str = Field(default="", description="Free text for humans.")

    @field_validator("id")
    @classmethod
    def _id_shape(cls, value: str) -> str:
        if not _RULE_ID_RE.match(value):
            raise PydanticCustomError(
                "airlock_rule_id",
                "rule id '{id}' must be 1-64 of a-z 0-9 - _ . starting with a letter or digit",
                {"id": value[:64]},
            )
        if value in builtin_rule_ids() or value.startswith(_RESERVED_PREFIXES):
            raise PydanticCustomError(
                "airlock_rule_id_reserved",
                "rule id '{id}' is reserved for a built-in rule; pick another id",
                {"id": value},
            )
        return value

    @field_validator("regex")
    @classmethod
    def _regex_compiles(cls, value: str) -> str:
        options = re2.Options()
        options.log_errors = False  # RE2 would otherwise print to stderr behind our back
        try:
            compiled = re2.compile(value, options)
        except re2.error as exc:
            raise PydanticCustomError(
                "airlock_regex",
                "not a valid RE2 regex: {why} (RE2 has no lookaround or backreferences)",
                {"why": _re2_reason(exc)},
            ) from exc
        if any(_matches_empty(compiled, probe) for probe in _EMPTY_PROBES):
            raise PydanticCustomError(
                "airlock_regex_empty",
                "regex can match the empty string; use + instead of * or remove the empty branch",
            )
        return value


def _re2_reason(exc: Exception) -> str:
    raw = exc.args[0] if exc.args else exc
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def _matches_empty(compiled: Any, probe: str) -> bool:
    match = compiled.search(probe)
    return match is not None and match.end() == match.start()


class MaskPolicy(_Section):
    """What counts as a secret in recorded output."""

    env: tuple[EnvName, ...] = Field(
        default=(),
        description=(
            "Names of environment variables whose values are secrets: each value (and its common "
            "encodings) is masked wherever it appears. Names only, never values."
        ),
    )
    patterns: tuple[MaskPattern, ...] = Field(
        default=(), description="Extra regex rules, ids unique and not clashing with built-ins."
    )
    correlate: Literal["none", "hmac"] = Field(
        default="none",
        description=(
            "none: a masked secret becomes [MASKED:<rule>]; hmac: the replacement also carries a "
            "keyed hash so equal secrets can be correlated without revealing them."
        ),
    )
    builtin: StrictBool = Field(
        default=True, description="Use the built-in secret patterns (tokens, keys, JWTs, ...)."
    )
    weak: Literal["error", "warn"] = Field(
        default="warn",
        description=(
            "A mask.env value that would mask ordinary text (a common or single short word, a "
            "short number, one repeated character). error: refuse to start (exit 80); warn: "
            "mask it anyway, say so on stderr and in session.start. Values shorter than 4 bytes "
            "are always refused."
        ),
    )

    @field_validator("env")
    @classmethod
    def _env_unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        dupes = _duplicates(value)
        if dupes:
            raise PydanticCustomError(
                "airlock_duplicate", "listed more than once: {names}", {"names": ", ".join(dupes)}
            )
        return value

    @field_validator("patterns")
    @classmethod
    def _ids_unique(cls, value: tuple[MaskPattern, ...]) -> tuple[MaskPattern, ...]:
        dupes = _duplicates(tuple(p.id for p in value))
        if dupes:
            raise PydanticCustomError(
                "airlock_duplicate",
                "rule ids must be unique; used more than once: {ids}",
                {"ids": ", ".join(dupes)},
            )
        return value


class EnvironmentPolicy(_Section):
    """What the agent's environment may contain."""

    remove: tuple[EnvRemoveEntry, ...] = Field(
        default=(),
        description=(
            "Variables removed from the agent's environment: exact names or NAME_* prefix globs "
            "('*' only at the end)."
        ),
    )
    keep_masked_vars: StrictBool = Field(
        default=True,
        description=(
            "Keep the variables listed in mask.env visible to the agent (their values are masked "
            "in recorded output). false removes them from the agent's environment too."
        ),
    )

    @field_validator("remove")
    @classmethod
    def _remove_unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        dupes = _duplicates(value)
        if dupes:
            raise PydanticCustomError(
                "airlock_duplicate", "listed more than once: {names}", {"names": ", ".join(dupes)}
            )
        return value

    def removes(self, name: str) -> bool:
        """True when variable ``name`` is matched by one of the ``remove`` entries."""
        return any(env_pattern_matches(pattern, name) for pattern in self.remove)


class ApprovalsPolicy(_Section):
    """Who is asked when a guardrail says require_approval, and how long they have."""

    backend: Literal["console", "file", "deny", "broker"] = Field(
        default="console",
        description=(
            "console: a prompt on the terminal (no terminal means deny); file: decisions dropped "
            "into `dir` by `airlock gate decide`; deny: refuse everything that needs approval; "
            "broker: the broker posts the request in the PR/MR (`forge`) and relays the click."
        ),
    )
    timeout: Duration = Field(
        default=1800, gt=0, le=7 * 24 * 3600, description="Unanswered after this means denied."
    )
    dir: str = Field(default=".airlock/approvals", description="The file backend's directory.")
    forge: Literal["github-check", "gitlab"] = Field(
        default="github-check",
        description="broker backend: a GitHub check run with buttons, or a GitLab MR note.",
    )


class Policy(_Section):
    """A session policy: how a session is recorded. ``Policy()`` is the default policy."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        title="Airlock session policy (airlock.yaml)",
    )

    version: Literal[1] = Field(default=1, description="Policy format version; only 1 exists.")
    capture: CaptureSettings = Field(default_factory=CaptureSettings)
    mask: MaskPolicy = Field(default_factory=MaskPolicy)
    environment: EnvironmentPolicy = Field(default_factory=EnvironmentPolicy)
    gateways: tuple[GatewayConfig, ...] = Field(
        default=(), description="PostgreSQL and HTTP gateways the session runs (names unique)."
    )
    guardrails: tuple[GuardrailRule, ...] = Field(
        default=(), description="Rules on SQL statements and HTTP requests (ids unique)."
    )
    guardrail_defaults: GuardrailDefaults = Field(default_factory=GuardrailDefaults)
    approvals: ApprovalsPolicy = Field(default_factory=ApprovalsPolicy)
    network: NetworkPolicy | None = Field(
        default=None,
        description="Egress allowlist (docs/egress.md). Present: `airlock run` starts the egress "
        "proxy and the agent's HTTP(S) traffic goes through it, default deny.",
    )
    sandbox: SandboxPolicy = Field(default_factory=SandboxPolicy)

    @field_validator("version", mode="before")
    @classmethod
    def _version_is_an_integer(cls, value: Any) -> Any:
        if isinstance(value, bool | float):  # 1.0 and true would otherwise pass as 1
            raise PydanticCustomError("airlock_version", "must be the integer 1")
        return value

    @field_validator("gateways")
    @classmethod
    def _gateway_names_unique(cls, value: tuple[Any, ...]) -> tuple[Any, ...]:
        dupes = _duplicates(tuple(g.name for g in value))
        if dupes:
            raise PydanticCustomError(
                "airlock_duplicate",
                "gateway names must be unique; used more than once: {names}",
                {"names": ", ".join(dupes)},
            )
        return value

    @field_validator("guardrails")
    @classmethod
    def _guardrails_consistent(
        cls, value: tuple[GuardrailRule, ...], info: ValidationInfo
    ) -> tuple[GuardrailRule, ...]:
        dupes = _duplicates(tuple(r.id for r in value))
        if dupes:
            raise PydanticCustomError(
                "airlock_duplicate",
                "guardrail ids must be unique; used more than once: {ids}",
                {"ids": ", ".join(dupes)},
            )
        kinds = {g.name: g.kind for g in info.data.get("gateways", ())}
        for rule in value:
            for name in rule.gateways or ():
                if kinds.get(name) != rule.kind:
                    raise PydanticCustomError(
                        "airlock_guardrail_gateway",
                        "guardrail {id}: gateway '{name}' is not a {kind} gateway of this policy "
                        "(declared: {known})",
                        {
                            "id": rule.id,
                            "name": name,
                            "kind": rule.kind,
                            "known": ", ".join(sorted(kinds)) or "none",
                        },
                    )
        return value

    @field_validator("network")
    @classmethod
    def _network_beside_gateways(
        cls, value: NetworkPolicy | None, info: ValidationInfo
    ) -> NetworkPolicy | None:
        if value is None:
            return value
        problem = value.bind_gateways(_upstream_hosts(info.data.get("gateways", ())))
        if problem is not None:
            raise PydanticCustomError("airlock_network_gateway", problem)
        return value

    def digest(self) -> str:
        """``sha256:<hex>`` of the canonical JSON of the effective policy, for session records.

        Two files that differ only in comments, key order or spelt-out defaults have one digest.
        """
        if self is DEFAULT_POLICY:  # dumping it would build every model's schema (see below)
            return DEFAULT_DIGEST  # Policy().digest(), pinned in airlock.policy.default
        canonical = json.dumps(
            self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _upstream_hosts(gateways: tuple[GatewayConfig, ...]) -> dict[str, str]:
    hosts: dict[str, str] = {}
    for gateway in gateways:
        upstream = gateway.upstream
        if upstream is None:
            continue
        host = upstream.host if not isinstance(upstream, str) else urlsplit(upstream).hostname
        if host:
            hosts[gateway.name] = host.lower()
    return hosts


_S = TypeVar("_S", bound=BaseModel)


def _constructed(cls: type[_S]) -> _S:
    """``cls()`` built from the fields' own defaults without validating them: they are our
    constants (a test checks the result equals ``cls()``), and validating them would build the
    schema of every model the policy nests (gateways, guardrails, network): ~50-80 ms of
    ``airlock run``'s start-up that a run without ``--policy`` never needs."""
    values: dict[str, Any] = {}
    for name, field in cls.model_fields.items():
        factory = field.default_factory
        if isinstance(factory, type) and issubclass(factory, BaseModel):
            values[name] = _constructed(factory)
        elif factory is not None:
            values[name] = factory()  # type: ignore[call-arg]
        else:
            values[name] = field.default
    return cls.model_construct(_fields_set=set(), **values)


DEFAULT_POLICY: Policy = _constructed(Policy)
"""What ``airlock run`` uses without ``--policy``: exec capture required, pty auto, built-in
masking on, nothing removed beyond the CI variables Airlock always withholds."""
