"""AWS: temporary credentials from STS, narrowed by an inline session policy.

Two modes (provider config ``mode``):

- ``assume_role`` (default): the broker's own AWS identity (default chain, or ``profile``) calls
  ``AssumeRole`` with a run-derived ``RoleSessionName``, session ``Tags`` (repository, run...),
  the grant's session ``Policy`` and ``DurationSeconds`` from the common TTL model.
- ``web_identity``: ``AssumeRoleWithWebIdentity`` with the caller's verified OIDC token
  (``IssueRequest.web_identity_token``), or a token file the broker itself holds
  (``web_identity_token_file``, e.g. on EKS). The call is unsigned. STS takes session tags from
  the token's claims in this mode, so ``Tags`` are not sent.

The effective permissions are the intersection of the role's policies and the session policy.
STS cannot revoke a session: :meth:`AwsProvider.revoke` records that the lease ended and the
credentials live until ``expires_at`` (minimum 900 s). docs/providers.md describes the
AWS-documented cut-off (a deny policy on the role conditioned on ``aws:TokenIssueTime``).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import boto3
import botocore.exceptions
from botocore import UNSIGNED
from botocore.config import Config
from pydantic import BaseModel, ConfigDict, Field, field_validator

from airlock.errors import ConfigError
from airlock.providers.interface import (
    CredentialProvider,
    IssuedCredential,
    IssueRequest,
    ProviderError,
    TtlLimits,
    clamp_ttl,
)
from airlock.providers.secrets import redact, resolve_secret

if TYPE_CHECKING:
    from mypy_boto3_sts.client import STSClient
    from mypy_boto3_sts.type_defs import TagTypeDef

__all__ = [
    "AwsConfig",
    "AwsGrant",
    "AwsProvider",
    "session_name",
    "session_policy",
    "session_tags",
]

log = logging.getLogger(__name__)

STS_MIN_SECONDS = 900
_MAX_POLICY_CHARS = 2048
_ROLE_ARN = r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9_+=,.@/-]{1,512}$"
_SESSION_BAD = re.compile(r"[^\w+=,.@-]", re.ASCII)
_TAG_BAD = re.compile(r"[^\w .:/=+@-]")
_MAX_TAGS = 50


class _DropWireBodies(logging.Filter):
    """botocore logs whole request and response bodies at DEBUG; for STS they hold credentials."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


def _guard_wire_logs() -> None:
    """Keep STS bodies (tokens in, credentials out) out of DEBUG logs, process-wide."""
    for name in ("botocore.parsers", "botocore.endpoint"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropWireBodies) for f in logger.filters):
            logger.addFilter(_DropWireBodies())


class AwsConfig(BaseModel):
    """A ``providers:`` entry for AWS."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    mode: Literal["assume_role", "web_identity"] = "assume_role"
    region: str = "us-east-1"
    endpoint_url: str | None = None
    profile: str | None = None
    web_identity_token_file: str | None = None
    max_session_seconds: int = Field(default=3600, ge=STS_MIN_SECONDS, le=43200)
    allowed_role_arns: list[str] | None = None


class AwsGrant(BaseModel):
    """A grant: the role to assume and the session policy that narrows it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    role_arn: str = Field(pattern=_ROLE_ARN)
    statements: list[dict[str, Any]] | None = None
    policy_arns: list[str] = Field(default_factory=list, max_length=10)
    region: str | None = None
    max_session_seconds: int | None = Field(default=None, ge=STS_MIN_SECONDS, le=43200)

    @field_validator("statements")
    @classmethod
    def _statements_are_iam(cls, value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        for index, statement in enumerate(value or ()):
            if statement.get("Effect") not in ("Allow", "Deny"):
                raise ValueError(f"statement {index}: Effect must be Allow or Deny")
            if not ({"Action", "NotAction"} & statement.keys()):
                raise ValueError(f"statement {index}: needs Action or NotAction")
            if not ({"Resource", "NotResource"} & statement.keys()):
                raise ValueError(f"statement {index}: needs Resource or NotResource")
        if value is not None and len(session_policy(value)) > _MAX_POLICY_CHARS:
            raise ValueError(f"session policy is longer than {_MAX_POLICY_CHARS} characters")
        return value


def session_name(raw: str) -> str:
    """A valid ``RoleSessionName``: ``[\\w+=,.@-]``, 2 to 64 characters."""
    name = _SESSION_BAD.sub("-", raw)[:64]
    return name if len(name) >= 2 else (name + "--")[:2]


def session_policy(statements: list[dict[str, Any]]) -> str:
    """The compact policy JSON sent as ``Policy`` (size counts against STS limits)."""
    return json.dumps(
        {"Version": "2012-10-17", "Statement": statements}, separators=(",", ":"), sort_keys=True
    )


def session_tags(tags: Mapping[str, str]) -> list[TagTypeDef]:
    """STS session tags: allowed characters only, key ≤ 128, value ≤ 256, at most 50."""
    out: list[TagTypeDef] = []
    for key, value in sorted(tags.items())[:_MAX_TAGS]:
        clean_key = _TAG_BAD.sub("_", key)[:128]
        if clean_key:
            out.append({"Key": clean_key, "Value": _TAG_BAD.sub("_", value)[:256]})
    return out


class AwsProvider(CredentialProvider):
    """STS temporary credentials."""

    name: ClassVar[str] = "aws"
    settings_model: ClassVar[type[BaseModel]] = AwsGrant
    config_model: ClassVar[type[BaseModel]] = AwsConfig
    ttl_limits: ClassVar[TtlLimits] = TtlLimits(minimum=STS_MIN_SECONDS, maximum=3600)
    _config: AwsConfig

    def __init__(self, config: AwsConfig) -> None:
        super().__init__(config)
        self._client: STSClient | None = None
        _guard_wire_logs()

    def validate_grant(self, settings: Mapping[str, Any]) -> AwsGrant:
        grant = super().validate_grant(settings)
        assert isinstance(grant, AwsGrant)
        allowed = self._config.allowed_role_arns
        if allowed is not None and grant.role_arn not in allowed:
            raise ConfigError(
                f"aws grant role {grant.role_arn} is not in the provider's allowed_role_arns"
            )
        return grant

    def limits_for(self, grant: AwsGrant) -> TtlLimits:
        """STS minimum 900 s; maximum the role's (grant, else provider) session duration."""
        maximum = grant.max_session_seconds or self._config.max_session_seconds
        return TtlLimits(minimum=STS_MIN_SECONDS, maximum=maximum)

    def issue(self, request: IssueRequest) -> IssuedCredential:
        grant = self.validate_grant(request.settings)
        ttl = clamp_ttl(request.ttl_seconds, self.limits_for(grant))
        params: dict[str, Any] = {
            "RoleArn": grant.role_arn,
            "RoleSessionName": session_name(request.session_name),
            "DurationSeconds": ttl.granted,
        }
        if grant.statements is not None:
            params["Policy"] = session_policy(grant.statements)
        if grant.policy_arns:
            params["PolicyArns"] = [{"arn": arn} for arn in grant.policy_arns]
        response = self._call(params, request)
        creds = response["Credentials"]
        region = grant.region or self._config.region
        return IssuedCredential(
            lease_id=request.lease_id,
            grant_name=request.grant_name,
            provider=self.name,
            values={
                "AWS_ACCESS_KEY_ID": creds["AccessKeyId"],
                "AWS_SECRET_ACCESS_KEY": creds["SecretAccessKey"],
                "AWS_SESSION_TOKEN": creds["SessionToken"],
                "AWS_REGION": region,
                "AWS_DEFAULT_REGION": region,
            },
            expires_at=creds["Expiration"].astimezone(UTC),
            revoke_handle={
                "role_arn": grant.role_arn,
                "assumed_role_arn": response["AssumedRoleUser"]["Arn"],
                "session_name": params["RoleSessionName"],
                "issued_at": datetime.now(UTC).isoformat(timespec="seconds"),
            },
            ttl=ttl,
        )

    def _call(self, params: dict[str, Any], request: IssueRequest) -> Any:
        hidden: list[str] = []
        try:
            if self._config.mode == "web_identity":
                token = self._web_identity_token(request)
                hidden.append(token)
                return self._sts(unsigned=True).assume_role_with_web_identity(
                    WebIdentityToken=token, **params
                )
            return self._sts().assume_role(Tags=session_tags(request.tags), **params)
        except botocore.exceptions.ClientError as exc:
            error = exc.response.get("Error", {})
            code, text = error.get("Code", "?"), error.get("Message", "")
            raise ProviderError(
                self.name,
                f"STS refused {params['RoleArn']}: {code}: {redact(text, hidden)}",
                hint="check the role's trust policy, the session policy size and the duration",
            ) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise ProviderError(
                self.name,
                f"cannot call STS: {type(exc).__name__}: {redact(str(exc), hidden)}",
                hint="check endpoint_url/region and the broker's AWS credentials",
            ) from None

    def _web_identity_token(self, request: IssueRequest) -> str:
        if request.web_identity_token:
            return request.web_identity_token
        if self._config.web_identity_token_file:
            path = self._config.web_identity_token_file
            return resolve_secret(f"file:{path}", "aws web_identity_token_file")
        raise ConfigError(
            "aws provider in web_identity mode got no token: the broker must pass the caller's "
            "OIDC token, or set web_identity_token_file"
        )

    def _sts(self, *, unsigned: bool = False) -> STSClient:
        if unsigned:
            return self._make_client(Config(signature_version=UNSIGNED))
        if self._client is None:
            self._client = self._make_client(None)
        return self._client

    def _make_client(self, extra: Config | None) -> STSClient:
        config = Config(
            connect_timeout=5, read_timeout=10, retries={"max_attempts": 3, "mode": "standard"}
        )
        if extra is not None:
            config = config.merge(extra)
        try:
            session = boto3.session.Session(
                profile_name=self._config.profile, region_name=self._config.region
            )
            return session.client("sts", endpoint_url=self._config.endpoint_url, config=config)
        except botocore.exceptions.BotoCoreError as exc:
            raise ConfigError(f"aws provider: cannot set up the STS client: {exc}") from None

    def revoke(self, lease_id: str, revoke_handle: Mapping[str, str]) -> None:
        log.warning(
            "aws lease %s ended; STS sessions cannot be revoked: %s stays valid until it "
            "expires (deny aws:TokenIssueTime on the role to cut it off; see docs/providers.md)",
            lease_id,
            revoke_handle.get("assumed_role_arn", "the session"),
        )
