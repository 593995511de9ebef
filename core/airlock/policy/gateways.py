"""The ``gateways:`` section of ``airlock.yaml``: PostgreSQL and HTTP gateways the session runs.

A gateway listens on loopback (or, with ``central: true``, anywhere), holds a credential the agent
never sees, records every request and masks what comes back. The credential is given by *name*
(environment variable names or a broker grant), never by value: a policy file holds no secret.

    GatewayConfig = PostgresGatewayConfig | HttpGatewayConfig   (discriminated by ``kind``)
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    Discriminator,
    Field,
    StrictBool,
    StrictInt,
    Tag,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

__all__ = [
    "GATEWAY_NAME_PATTERN",
    "AwsSigV4Credential",
    "GatewayConfig",
    "HttpCredential",
    "HttpEnvCredential",
    "HttpGatewayConfig",
    "HttpHeaderCredential",
    "PostgresCredential",
    "PostgresEnvCredential",
    "PostgresGatewayConfig",
    "PostgresUpstream",
    "parse_listen",
]

from airlock.policy._gateway_base import (  # noqa: F401 (re-exported)
    _COLUMN_GLOB_RE,
    _ENV_NAME_PATTERN,
    _ENV_NAME_RE,
    _GATEWAY_NAME_RE,
    _GRANT_NAME_RE,
    _HEADER_NAME_RE,
    GATEWAY_NAME_PATTERN,
    GRANT_NAME_PATTERN,
    EnvName,
    _check_env_name,
    _check_grant,
    _Gateway,
    _is_loopback,
    _Section,
    parse_listen,
)

# ---------------------------------------------------------------------------------- PostgreSQL


class PostgresUpstream(_Section):
    """The real database the gateway connects to."""

    host: str = Field(min_length=1, description="Host name or address of the upstream server.")
    port: StrictInt = Field(default=5432, ge=1, le=65535, description="Upstream port.")
    database: str = Field(min_length=1, description="Database name on the upstream server.")
    tls: Literal["disable", "prefer", "require", "verify-full"] = Field(
        default="prefer",
        description="TLS to the upstream: disable; prefer (TLS when offered, unverified); "
        "require (TLS, unverified); verify-full (TLS, certificate and host name checked).",
    )
    ca_file: str | None = Field(
        default=None,
        description="PEM file of CA certificates for verify-full (default: the system store).",
    )


class PostgresEnvCredential(_Section):
    """Upstream user name and password read from the runner's environment (names, not values)."""

    user: EnvName = Field(description="Variable holding the upstream user name.")
    password: EnvName = Field(description="Variable holding the upstream password.")


class PostgresCredential(_Section):
    """How the gateway logs in upstream. Exactly one form: ``env``, ``grant`` or ``user``."""

    env: PostgresEnvCredential | None = Field(
        default=None, description="User name and password from environment variables."
    )
    grant: str | None = Field(
        default=None,
        description="A broker grant that issues an ephemeral role (resolved by the broker).",
    )
    user: str | None = Field(
        default=None, min_length=1, description="A literal upstream user name."
    )
    password_env: EnvName | None = Field(
        default=None,
        description="With user: the variable holding its password (omit for trust auth).",
    )

    @field_validator("grant")
    @classmethod
    def _grant_shape(cls, value: str | None) -> str | None:
        return None if value is None else _check_grant(value)

    @model_validator(mode="after")
    def _exactly_one_form(self) -> PostgresCredential:
        forms = [f for f in ("env", "grant", "user") if getattr(self, f) is not None]
        if len(forms) != 1:
            raise PydanticCustomError(
                "airlock_credential_form",
                "give exactly one of env (user and password variable names), grant: NAME, or "
                "user: NAME (with password_env); got {got}",
                {"got": ", ".join(forms) or "none"},
            )
        if self.password_env is not None and self.user is None:
            raise PydanticCustomError(
                "airlock_credential_form", "password_env goes with user: NAME only"
            )
        return self


class PostgresGatewayConfig(_Gateway):
    """A PostgreSQL wire-protocol gateway."""

    kind: Literal["postgres"] = Field(description="postgres")
    upstream: PostgresUpstream
    credential: PostgresCredential
    mask_columns: tuple[str, ...] = Field(
        default=(),
        description="Result columns whose values are replaced: COLUMN or TABLE.COLUMN globs "
        "('*' matches within a name), e.g. '*.password', 'users.email'.",
    )
    mask_values: StrictBool = Field(
        default=True,
        description="Also run the session masker over every result value (DataRow).",
    )

    @field_validator("mask_columns")
    @classmethod
    def _column_globs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for glob in value:
            if not _COLUMN_GLOB_RE.match(glob):
                raise PydanticCustomError(
                    "airlock_column_glob",
                    "{glob!r} is not COLUMN or TABLE.COLUMN (no spaces, at most one dot)",
                    {"glob": glob[:80]},
                )
        return value


# ---------------------------------------------------------------------------------------- HTTP


class HttpEnvCredential(_Section):
    """Bearer token, or basic user + password, from environment variables (names only)."""

    bearer: EnvName | None = Field(default=None, description="Variable holding a bearer token.")
    basic_user: EnvName | None = Field(default=None, description="Variable holding the user.")
    basic_password: EnvName | None = Field(
        default=None, description="Variable holding the password."
    )

    @model_validator(mode="after")
    def _one_scheme(self) -> HttpEnvCredential:
        basic = (self.basic_user is not None, self.basic_password is not None)
        if self.bearer is not None and any(basic):
            raise PydanticCustomError(
                "airlock_credential_form", "give bearer or basic_user + basic_password, not both"
            )
        if self.bearer is None and basic != (True, True):
            raise PydanticCustomError(
                "airlock_credential_form",
                "give bearer: NAME, or both basic_user: NAME and basic_password: NAME",
            )
        return self


class HttpHeaderCredential(_Section):
    """A custom header whose value comes from an environment variable."""

    name: str = Field(description="Header name, e.g. X-Api-Key.")
    value_env: EnvName = Field(description="Variable holding the header value.")

    @field_validator("name")
    @classmethod
    def _header_name(cls, value: str) -> str:
        if not _HEADER_NAME_RE.match(value):
            raise PydanticCustomError("airlock_header_name", "not a valid HTTP header name")
        return value


class AwsSigV4Credential(_Section):
    """Sign requests with AWS Signature V4 (keys from the standard AWS_* variables)."""

    region: str = Field(min_length=1, description="AWS region, e.g. eu-west-1.")
    service: str = Field(min_length=1, description="Signing service name, e.g. s3, execute-api.")


class HttpCredential(_Section):
    """What the HTTP gateway injects: one of ``env``, ``header``, ``aws_sigv4``, ``grant``."""

    env: HttpEnvCredential | None = Field(default=None, description="Bearer or basic auth.")
    header: HttpHeaderCredential | None = Field(default=None, description="A custom header.")
    aws_sigv4: AwsSigV4Credential | None = Field(default=None, description="AWS SigV4 signing.")
    grant: str | None = Field(default=None, description="A broker grant (resolved by the broker).")

    @field_validator("grant")
    @classmethod
    def _grant_shape(cls, value: str | None) -> str | None:
        return None if value is None else _check_grant(value)

    @model_validator(mode="after")
    def _exactly_one_form(self) -> HttpCredential:
        forms = [f for f in ("env", "header", "aws_sigv4", "grant") if getattr(self, f) is not None]
        if len(forms) != 1:
            raise PydanticCustomError(
                "airlock_credential_form",
                "give exactly one of env, header, aws_sigv4 or grant; got {got}",
                {"got": ", ".join(forms) or "none"},
            )
        return self


class HttpGatewayConfig(_Gateway):
    """An HTTP reverse proxy in front of one upstream base URL."""

    kind: Literal["http"] = Field(description="http")
    upstream: str = Field(description="Base URL of the upstream, http:// or https://.")
    credential: HttpCredential | None = Field(
        default=None,
        description="Credential injected upstream (client auth is always stripped); none: "
        "forward without credentials.",
    )
    record_bodies: StrictInt = Field(
        default=65536,
        ge=0,
        le=64 * 1024 * 1024,
        description="Record request and response bodies up to this many bytes each (0: none).",
    )
    mask_json_fields: tuple[str, ...] = Field(
        default=(),
        description="JSON fields masked in recorded bodies: dotted paths, '*' for one level, "
        "a bare name matches that key at any depth.",
    )

    @field_validator("upstream")
    @classmethod
    def _url_shape(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PydanticCustomError(
                "airlock_upstream_url", "upstream must be an http:// or https:// URL with a host"
            )
        if parts.username is not None or parts.password is not None:
            raise PydanticCustomError(
                "airlock_upstream_url",
                "upstream URL must not carry credentials; use credential: instead",
            )
        return value


# The agent-native gateways (model API, MCP) live in their own module; it builds on _Gateway.
from airlock.policy.agent_gateways import LlmGatewayConfig, McpGatewayConfig  # noqa: E402

_KINDS = ("postgres", "http", "llm", "mcp")


def _gateway_kind(value: Any) -> str | None:
    kind = value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)
    return kind if kind in _KINDS else None


GatewayConfig = Annotated[
    Annotated[PostgresGatewayConfig, Tag("postgres")]
    | Annotated[HttpGatewayConfig, Tag("http")]
    | Annotated[LlmGatewayConfig, Tag("llm")]
    | Annotated[McpGatewayConfig, Tag("mcp")],
    Discriminator(
        _gateway_kind,
        custom_error_type="airlock_gateway_kind",
        custom_error_message="kind must be postgres, http, llm or mcp",
    ),
]
"""One entry of ``gateways:``; ``kind`` selects the model."""
