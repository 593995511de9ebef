"""The held credential: read once from the runner's environment, injected into each request.

The agent never sees it. Whatever auth the client sent is stripped first (``strip``); then
:meth:`Injector.apply` adds the gateway's own: a bearer token, basic auth, a custom header, or an
AWS Signature V4 computed by botocore over the exact outgoing request. Every value is registered
with the session masker the moment it is read, so an echo of it never reaches the log.
"""

from __future__ import annotations

import abc
import base64
import hashlib
from collections.abc import Mapping

import httpx

from airlock.errors import ConfigError
from airlock.mask import Masker
from airlock.policy.gateways import AwsSigV4Credential, HttpCredential

__all__ = ["Injector", "NoCredential", "load_injector"]

# Client headers that carry auth: never forwarded, whatever the credential form.
CLIENT_AUTH_HEADERS = frozenset({"authorization", "proxy-authorization"})
_AWS_HEADERS = frozenset(
    {"x-amz-date", "x-amz-security-token", "x-amz-content-sha256", "x-amz-user-agent"}
)
_UNSIGNED = "UNSIGNED-PAYLOAD"
_HINT = "export the variable named in the policy's credential: before starting the gateway"


class Injector(abc.ABC):
    """Adds the held credential to an outgoing request."""

    #: Extra client headers (lower-case) stripped because this credential sets them.
    strip: frozenset[str] = CLIENT_AUTH_HEADERS
    #: True when :meth:`apply` needs the whole request body (SigV4 over a signed payload).
    needs_body: bool = False

    @abc.abstractmethod
    def apply(self, request: httpx.Request, body: bytes | None) -> None:
        """Add the credential to ``request`` (``body`` is given when :attr:`needs_body`)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class NoCredential(Injector):
    """Forward without credentials (client auth is still stripped)."""

    def apply(self, request: httpx.Request, body: bytes | None) -> None:
        return None


class _HeaderInjector(Injector):
    def __init__(self, name: str, value: str) -> None:
        self._name = name
        self._value = value
        self.strip = CLIENT_AUTH_HEADERS | {name.lower()}

    def apply(self, request: httpx.Request, body: bytes | None) -> None:
        request.headers[self._name] = self._value


class _SigV4Injector(Injector):
    def __init__(self, config: AwsSigV4Credential, access: str, secret: str, token: str | None):
        from botocore.credentials import Credentials

        self._credentials = Credentials(access, secret, token)
        self._region = config.region
        self._service = config.service
        # S3 accepts an unsigned payload, so bodies stream; other services sign the body hash.
        self.needs_body = config.service != "s3"
        self.strip = CLIENT_AUTH_HEADERS | _AWS_HEADERS

    def apply(self, request: httpx.Request, body: bytes | None) -> None:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        payload = _UNSIGNED if body is None else hashlib.sha256(body).hexdigest()
        headers = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
        headers["X-Amz-Content-SHA256"] = payload
        aws = AWSRequest(method=request.method, url=str(request.url), headers=headers)
        SigV4Auth(self._credentials, self._service, self._region).add_auth(aws)
        for name in ("Authorization", "X-Amz-Date", "X-Amz-Content-SHA256"):
            request.headers[name] = str(aws.headers[name])
        if "X-Amz-Security-Token" in aws.headers:
            request.headers["X-Amz-Security-Token"] = str(aws.headers["X-Amz-Security-Token"])


def load_injector(
    credential: HttpCredential | None,
    environ: Mapping[str, str],
    masker: Masker,
    gateway: str,
) -> Injector:
    """The injector for ``credential``, its values read from ``environ`` and registered with
    ``masker``. Raises ConfigError naming a missing variable (never a value)."""
    if credential is None:
        return NoCredential()
    rule = f"gateway.{gateway}"
    if credential.env is not None and credential.env.bearer is not None:
        token = _secret(environ, credential.env.bearer, masker, rule)
        return _HeaderInjector("Authorization", f"Bearer {token}")
    if credential.env is not None:
        assert credential.env.basic_user is not None and credential.env.basic_password is not None
        user = _value(environ, credential.env.basic_user)
        password = _secret(environ, credential.env.basic_password, masker, rule)
        pair = base64.b64encode(f"{user}:{password}".encode()).decode()
        masker.add_secret(pair, rule)
        return _HeaderInjector("Authorization", f"Basic {pair}")
    if credential.header is not None:
        value = _secret(environ, credential.header.value_env, masker, rule)
        return _HeaderInjector(credential.header.name, value)
    if credential.aws_sigv4 is not None:
        access = _value(environ, "AWS_ACCESS_KEY_ID")
        secret = _secret(environ, "AWS_SECRET_ACCESS_KEY", masker, rule)
        session_token = environ.get("AWS_SESSION_TOKEN") or None
        if session_token is not None:
            masker.add_secret(session_token, rule)
        return _SigV4Injector(credential.aws_sigv4, access, secret, session_token)
    raise ConfigError(
        f"gateway {gateway}: credential grants are resolved by the broker, which is not wired "
        "to the HTTP gateway yet",
        hint="use credential: {env: …}, {header: …} or {aws_sigv4: …} for now",
    )


def _value(environ: Mapping[str, str], name: str) -> str:
    value = environ.get(name)
    if not value:
        raise ConfigError(f"the gateway credential variable {name} is not set", hint=_HINT)
    return value


def _secret(environ: Mapping[str, str], name: str, masker: Masker, rule: str) -> str:
    value = _value(environ, name)
    masker.add_secret(value, rule)
    return value
