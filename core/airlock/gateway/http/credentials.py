"""The held credential: read once from the runner's environment, injected into each request.

The agent never sees it. Whatever auth the client sent is stripped first (``strip``); then
:meth:`Injector.apply` adds the gateway's own: a bearer token, basic auth, a custom header, or an
AWS Signature V4 computed by botocore over the exact outgoing request. Every value is registered
with the session masker the moment it is read, so an echo of it never reaches the log.
"""

from __future__ import annotations

import abc
import base64
import contextlib
import hashlib
from collections.abc import Mapping

from airlock.errors import ConfigError
from airlock.gateway.h1.messages import Request
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
    #: The held secret values (never shown): masked in text responses to the client.
    secrets: tuple[str, ...] = ()
    #: When set, all :meth:`apply` does is add this one header (its name in :attr:`strip`):
    #: the gateway appends it to the headers it forwards instead.
    header: tuple[bytes, bytes] | None = None

    @abc.abstractmethod
    def apply(self, request: Request, body: bytes | None) -> None:
        """Add the credential to ``request`` (``body`` is given when :attr:`needs_body`)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class NoCredential(Injector):
    """Forward without credentials (client auth is still stripped)."""

    def apply(self, request: Request, body: bytes | None) -> None:
        return None


class _HeaderInjector(Injector):
    def __init__(self, name: str, value: str) -> None:
        self._name = name
        self._value = value
        self.strip = CLIENT_AUTH_HEADERS | {name.lower()}
        with contextlib.suppress(UnicodeEncodeError):  # else apply() says so, per request
            self.header = (name.encode("latin-1"), value.encode("latin-1"))

    def apply(self, request: Request, body: bytes | None) -> None:
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

    def apply(self, request: Request, body: bytes | None) -> None:
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
    held = _Held(environ, masker, f"gateway.{gateway}")
    injector = _injector(credential, held, gateway)
    injector.secrets = tuple(held.values)
    return injector


def _injector(credential: HttpCredential | None, held: _Held, gateway: str) -> Injector:
    if credential is None:
        return NoCredential()
    if credential.env is not None and credential.env.bearer is not None:
        return _HeaderInjector("Authorization", f"Bearer {held.secret(credential.env.bearer)}")
    if credential.env is not None:
        assert credential.env.basic_user is not None and credential.env.basic_password is not None
        user = held.value(credential.env.basic_user)
        password = held.secret(credential.env.basic_password)
        pair = held.add(base64.b64encode(f"{user}:{password}".encode()).decode())
        return _HeaderInjector("Authorization", f"Basic {pair}")
    if credential.header is not None:
        return _HeaderInjector(credential.header.name, held.secret(credential.header.value_env))
    if credential.aws_sigv4 is not None:
        access = held.value("AWS_ACCESS_KEY_ID")
        secret = held.secret("AWS_SECRET_ACCESS_KEY")
        token = held.environ.get("AWS_SESSION_TOKEN") or None
        if token is not None:
            held.add(token)
        return _SigV4Injector(credential.aws_sigv4, access, secret, token)
    raise ConfigError(
        f"gateway {gateway}: credential grants are resolved by the broker, which is not wired "
        "to the HTTP gateway yet",
        hint="use credential: {env: …}, {header: …} or {aws_sigv4: …} for now",
    )


class _Held:
    """Reads credential variables; every secret is registered with the masker as it is read."""

    def __init__(self, environ: Mapping[str, str], masker: Masker, rule: str) -> None:
        self.environ = environ
        self._masker = masker
        self._rule = rule
        self.values: list[str] = []

    def value(self, name: str) -> str:
        value = self.environ.get(name)
        if not value:
            raise ConfigError(f"the gateway credential variable {name} is not set", hint=_HINT)
        return value

    def secret(self, name: str) -> str:
        return self.add(self.value(name))

    def add(self, value: str) -> str:
        self._masker.add_secret(value, self._rule)
        self.values.append(value)
        return value
