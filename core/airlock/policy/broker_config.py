"""The broker configuration (``broker.yaml``): who may get what, as pydantic models.

Structure only lives here: unknown keys are refused at every level (a misspelt key must never
turn a protection off), durations are parsed, claim values normalised to lists of strings. The
rules' meaning (immutable ids, globs, events, grant names) is checked when the policy is compiled
by :func:`airlock.policy.trust.compile_trust_policy`. :func:`load_broker_config` reads a file and
reports every problem with its YAML path and line. Messages never echo a value that could be a
secret (a state DSN, a provider setting): they name the path and what to fix.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from airlock.errors import ConfigError
from airlock.oidc.issuers import IssuerConfig
from airlock.policy.durations import Duration, parse_duration

__all__ = [
    "DEFAULT_GRANT_TTL",
    "DEFAULT_STATE",
    "MAX_GRANT_TTL",
    "NAME_PATTERN",
    "SENSITIVE_EVENTS",
    "ApprovalsConfig",
    "ApproverEntry",
    "ApproverName",
    "BrokerConfig",
    "CentralGateway",
    "GitHubAppEntry",
    "GitLabEntry",
    "GrantEntry",
    "IssuerEntry",
    "Limits",
    "RateLimit",
    "RuleEntry",
    "SensitiveEvent",
    "broker_config_schema",
    "load_broker_config",
    "parse_broker_config",
    "parse_duration",
]

NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
DEFAULT_GRANT_TTL = 15 * 60
MAX_GRANT_TTL = 12 * 3600
DEFAULT_STATE = "sqlite:///airlock-broker.db"
# Triggers that run a fork's code (or code influenced by it) with the base repository's
# identity: refused unless a rule names them in ``allow_events``. "fork" stands for any token
# whose claims show that the code comes from another repository than the one it speaks for.
SensitiveEvent = Literal[
    "pull_request_target",
    "workflow_run",
    "merge_request_event",
    "external_pull_request_event",
    "fork",
]
SENSITIVE_EVENTS: tuple[str, ...] = get_args(SensitiveEvent)
_CLAIM_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$")
_GITHUB_ISSUER_HOSTS = ("token.actions.githubusercontent.com",)
_HINT = "docs/broker-config.md describes every key; `airlock broker check --config FILE` rechecks"


def _claim_text(value: Any) -> str:
    # YAML reads `repository_id: 123456` as an int and `ref_protected: true` as a bool; both
    # have one obvious string form in a token, so they are accepted. Floats are not.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value:
        return value
    raise ValueError("a claim condition is a non-empty string (or a list of them)")


def _claim_values(value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError("a claim condition needs at least one value")
    return [_claim_text(item) for item in items]


_SCALAR = {"anyOf": [{"type": "string", "minLength": 1}, {"type": "integer"}, {"type": "boolean"}]}
ClaimValues = Annotated[
    list[str],
    BeforeValidator(_claim_values),
    WithJsonSchema(
        {
            "anyOf": [_SCALAR, {"type": "array", "items": _SCALAR, "minItems": 1}],
            "description": "exact value, list of values, or glob where * stays within one "
            "path segment (never crosses /)",
        }
    ),
]


class IssuerEntry(BaseModel):
    """One trusted OIDC issuer (see :class:`airlock.oidc.IssuerConfig`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    url: str
    audience: str
    platform: Literal["github", "gitlab", "other"] | None = Field(
        default=None,
        description="which claims are immutable ids; inferred for GitHub and gitlab.* hosts",
    )
    algorithms: list[str] = Field(default_factory=lambda: ["RS256"], min_length=1)
    max_token_age: Duration = Field(default=600, gt=0)
    leeway: Duration = 60

    @model_validator(mode="after")
    def _valid_issuer(self) -> IssuerEntry:
        try:
            self.issuer_config()
        except ConfigError as exc:
            raise ValueError(exc.message) from None
        if self.resolved_platform is None:
            raise ValueError("cannot tell the platform from the url: set platform: github|gitlab")
        return self

    def issuer_config(self) -> IssuerConfig:
        """The verifier's view of this entry."""
        return IssuerConfig(
            name=self.name,
            url=self.url,
            audience=self.audience,
            algorithms=tuple(self.algorithms),
            max_token_age=self.max_token_age,
            leeway=self.leeway,
        )

    @property
    def resolved_platform(self) -> str | None:
        """``platform`` as written, else inferred from the issuer URL."""
        if self.platform is not None:
            return self.platform
        parts = urlsplit(self.url)
        host = (parts.hostname or "").lower()
        if host in _GITHUB_ISSUER_HOSTS or parts.path.rstrip("/").endswith("/_services/token"):
            return "github"
        if host == "gitlab.com" or host.startswith("gitlab."):
            return "gitlab"
        return None


class GrantEntry(BaseModel):
    """A named credential a rule can allow. Keys other than these go to the provider."""

    model_config = ConfigDict(extra="allow", frozen=True)

    provider: str = Field(min_length=1, description="provider instance (providers:) or kind")
    ttl: Duration = Field(default=DEFAULT_GRANT_TTL, ge=60, le=MAX_GRANT_TTL)
    description: str | None = None

    @property
    def settings(self) -> dict[str, Any]:
        """The provider-specific keys of this grant, for the provider to validate."""
        return dict(self.model_extra or {})


class RuleEntry(BaseModel):
    """A trust rule: if every claim condition holds, the job may get up to ``grants``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=NAME_PATTERN)
    issuer: str
    effect: Literal["allow", "deny"] = "allow"
    claims: dict[str, ClaimValues] = Field(default_factory=dict)
    grants: list[str] = Field(
        default_factory=list, description="allow: the ceiling; deny: grants refused (empty = all)"
    )
    allow_events: list[SensitiveEvent] = Field(
        default_factory=list,
        description="sensitive triggers this rule accepts; they are refused otherwise",
    )
    unsafe: bool = Field(
        default=False, description="accept a rule that binds no immutable id (logged warning)"
    )
    description: str | None = None

    @field_validator("claims")
    @classmethod
    def _claim_names(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        bad = [name for name in value if not _CLAIM_NAME_RE.match(name)]
        if bad:
            raise ValueError(f"claim names {bad} are not valid claim names")
        return value


class RateLimit(BaseModel):
    """At most ``rate`` exchanges per ``per``, with bursts of up to ``burst``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rate: int = Field(default=60, ge=1)
    per: Duration = Field(default=60, gt=0)
    burst: int | None = Field(default=None, ge=1)


class Limits(BaseModel):
    """Rate limits; keyed by the immutable repository id (GitLab: project id)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    per_repository: RateLimit = Field(default_factory=RateLimit)


class GitHubAppEntry(BaseModel):
    """The GitHub App the broker acts as for approvals (check runs, deployment reviews)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    app_id: int | str
    installation_id: int = Field(ge=1)
    private_key: SecretStr = Field(description="PEM, or file:PATH / env:NAME")
    webhook_secret: SecretStr = Field(description="the App's webhook secret, or file:/env:")
    api_url: str = "https://api.github.com"
    environments: list[str] = Field(
        default_factory=list,
        description="environments whose deployment protection rule the broker answers",
    )


class GitLabEntry(BaseModel):
    """The GitLab instance the broker posts merge request notes to and takes webhooks from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = "https://gitlab.com"
    token: SecretStr = Field(description="API token (api scope) for notes and member checks")
    webhook_token: SecretStr = Field(description="the webhook's secret token, or file:/env:")


ApproverName = Annotated[
    str,
    Field(
        pattern=r"^(id:[0-9]{1,19}|[A-Za-z0-9][A-Za-z0-9._-]{0,254})$",
        description="a forge login (ASCII, compared without case) or id:<numeric user id>; "
        "an id is safer: a login can be given up and taken by another account",
    ),
]


class ApproverEntry(BaseModel):
    """Who may approve: at least ``permission``, and one of ``users`` or of ``teams`` if named."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    users: list[ApproverName] = Field(default_factory=list)
    teams: list[str] = Field(default_factory=list, description="GitHub org/slug or GitLab group")
    permission: Literal["read", "triage", "write", "maintain", "admin"] = "write"
    allow_self: bool = Field(default=False, description="the requester may approve")
    allow_author: bool = Field(default=False, description="the PR/MR author may approve")
    min_approvals: int = Field(
        default=1,
        ge=1,
        le=10,
        description="distinct entitled approvers needed; one entitled deny decides at once",
    )
    require_justification: bool = Field(
        default=False,
        description="an approval must say why (GitLab: text after `/airlock approve <id>`)",
    )


class ApprovalsConfig(BaseModel):
    """Approval gates served by the broker; every request must also satisfy ``approvers``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    github_app: GitHubAppEntry | None = None
    gitlab: GitLabEntry | None = None
    approvers: ApproverEntry = Field(default_factory=ApproverEntry)
    max_timeout: Duration = Field(default=24 * 3600, gt=0, le=7 * 24 * 3600)

    @model_validator(mode="after")
    def _justification_needs_text(self) -> ApprovalsConfig:
        if self.approvers.require_justification and self.github_app is not None:
            raise ValueError(
                "approvers.require_justification cannot be enforced with github_app: a check "
                "run button carries no text; drop github_app or require_justification"
            )
        return self


class _SourceMap:
    """Maps a pydantic location to the YAML path and line it came from."""

    def __init__(self, path: Path | None, root: yaml.Node | None) -> None:
        self.path = path
        self.root = root

    def where(self, loc: Sequence[str | int]) -> str:
        line = _line_of(self.root, loc)
        suffix = f" (line {line})" if line is not None else ""
        return f"{_yaml_path(loc)}{suffix}"


class CentralGateway(BaseModel):
    """A gateway that runs next to the broker (``airlock gateway --broker``): it checks the
    tickets jobs present with the broker, authenticating with a token whose SHA-256 is here."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    token_sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$",
        description="SHA-256 (hex) of the gateway's token (never the token itself)",
    )
    ticket_ttl: Duration = Field(default=900, ge=60, le=MAX_GRANT_TTL)


class BrokerConfig(BaseModel):
    """The whole ``broker.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="Airlock broker config")

    version: Literal[1] = 1
    issuers: list[IssuerEntry] = Field(min_length=1)
    grants: dict[str, GrantEntry] = Field(default_factory=dict)
    providers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    rules: list[RuleEntry] = Field(default_factory=list)
    state: str = Field(
        default=DEFAULT_STATE,
        description="sqlite:///path or a postgresql:// DSN (password from the environment)",
    )
    limits: Limits = Field(default_factory=Limits)
    approvals: ApprovalsConfig = Field(default_factory=ApprovalsConfig)
    central_gateways: dict[str, CentralGateway] = Field(
        default_factory=dict,
        description="Gateways off the runner that check job tickets with this broker, by name.",
    )

    _source: _SourceMap | None = PrivateAttr(default=None)

    @field_validator("grants", "providers")
    @classmethod
    def _names(cls, value: dict[str, Any]) -> dict[str, Any]:
        bad = [name for name in value if not re.match(NAME_PATTERN, name)]
        if bad:
            raise ValueError(f"names {bad} must match {NAME_PATTERN}")
        return value

    @field_validator("state")
    @classmethod
    def _state_url(cls, value: str) -> str:
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme not in ("sqlite", "postgresql", "postgresql+psycopg"):
            raise ValueError("state must be sqlite:///PATH or postgresql://… (value not shown)")
        return value

    def where(self, loc: Sequence[str | int]) -> str:
        """``loc`` as a YAML path, with the line number when the config came from a file."""
        return self._source.where(loc) if self._source else _yaml_path(loc)

    def issuer(self, name: str) -> IssuerEntry | None:
        """The issuer entry called ``name``."""
        return next((entry for entry in self.issuers if entry.name == name), None)


def broker_config_schema() -> dict[str, Any]:
    """The JSON Schema of ``broker.yaml`` (committed as docs/broker-config.schema.json)."""
    schema = BrokerConfig.model_json_schema(mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def load_broker_config(path: str | Path) -> BrokerConfig:
    """Read and validate a broker config file; :class:`ConfigError` lists every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read broker config {path}: {type(exc).__name__}",
            hint="check --config and the file's permissions",
        ) from exc
    return parse_broker_config(text, source=path)


def parse_broker_config(text: str, *, source: Path | None = None) -> BrokerConfig:
    """Validate broker config YAML ``text``; ``source`` names the file in messages."""
    label = str(source) if source else "broker config"
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
        root = yaml.compose(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{label}: not valid YAML: {_yaml_problem(exc)}", hint=_HINT) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{label}: the top level must be a mapping (issuers:, grants:, rules:)", hint=_HINT
        )
    source_map = _SourceMap(source, root)
    try:
        config = BrokerConfig.model_validate(data)
    except ValidationError as exc:
        problems = [
            f"{source_map.where(err['loc'])}: {_message(err['msg'])}" for err in exc.errors()
        ]
        raise config_problems(label, problems) from None
    config._source = source_map
    return config


def config_problems(label: str, problems: Sequence[str]) -> ConfigError:
    """One :class:`ConfigError` listing ``problems`` (each starting with its YAML path)."""
    count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
    body = "\n".join(f"  - {problem}" for problem in problems)
    return ConfigError(f"{label}: {count}:\n{body}", hint=_HINT)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (YAML keeps the last one silently)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _message(msg: str) -> str:
    return msg.removeprefix("Value error, ")


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or type(exc).__name__
    return f"{problem} (line {mark.line + 1})" if mark is not None else str(problem)


def _yaml_path(loc: Sequence[str | int]) -> str:
    path = ""
    for item in loc:
        if isinstance(item, int):
            path += f"[{item}]"
        elif _CLAIM_NAME_RE.match(item) or re.match(NAME_PATTERN, item):
            path += f".{item}" if path else item
        else:
            continue  # pydantic's own tags ("function-after[...]"), not keys of the file
    return path or "(top level)"


def _line_of(node: yaml.Node | None, loc: Sequence[str | int]) -> int | None:
    line = node.start_mark.line + 1 if node is not None else None
    for item in loc:
        child = _child(node, item)
        if child is None:
            break
        node, line = child, child.start_mark.line + 1
    return line


def _child(node: yaml.Node | None, item: str | int) -> yaml.Node | None:
    if isinstance(node, yaml.SequenceNode) and isinstance(item, int):
        return node.value[item] if 0 <= item < len(node.value) else None
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(item):
                return value_node  # type: ignore[no-any-return]
    return None
