"""A real OIDC issuer over HTTP for tests: discovery, JWKS, RS256 keys, rotation, minting.

Usage::

    from tests.support.oidc_issuer import OIDCIssuer

    with OIDCIssuer() as issuer:            # uvicorn in a thread on 127.0.0.1:<free port>
        token = issuer.mint(issuer.github_claims(audience="https://broker.test"))
        issuer.hits["/.well-known/jwks"]    # how many times the JWKS was fetched
        new_kid = issuer.rotate()           # add a key and sign with it from now on
        issuer.remove_key(old_kid)

A session-long server can be shared: :meth:`reset` gives each test a fresh key and zeroed
counters. ``routes`` lets a test replace any path's answer (a redirect, a huge body, a foreign
``jwks_uri``); every request is counted in ``hits`` (path -> count) and listed in ``requests``,
so a second instance makes a fine "attacker" server whose hit counter must stay at zero.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import jwt
import uvicorn
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = ["OIDCIssuer", "b64url", "forge", "github_claims", "gitlab_claims"]

JWKS_PATH = "/.well-known/jwks"
DISCOVERY_PATH = "/.well-known/openid-configuration"
Handler = Callable[[Request], Response]


def b64url(data: bytes) -> str:
    """base64url without padding, as JOSE writes it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: Mapping[str, Any], claims: Mapping[str, Any], signature: bytes = b"") -> str:
    """A compact JWS built by hand: for tokens no honest library would produce."""
    head = b64url(json.dumps(dict(header)).encode())
    body = b64url(json.dumps(dict(claims)).encode())
    return f"{head}.{body}.{b64url(signature)}"


def _times(now: float | None) -> dict[str, int]:
    issued = int(time.time() if now is None else now)
    return {"iat": issued, "nbf": issued - 5, "exp": issued + 300}


def github_claims(issuer_url: str, audience: str, **overrides: Any) -> dict[str, Any]:
    """Claims shaped like a GitHub Actions token for a push to main of acme/api."""
    sha = "9f3c0a1d2b4e5f60718293a4b5c6d7e8f9a0b1c2"
    claims: dict[str, Any] = {
        "jti": str(uuid.uuid4()),
        "sub": "repo:acme/api:ref:refs/heads/main",
        "aud": audience,
        "ref": "refs/heads/main",
        "sha": sha,
        "repository": "acme/api",
        "repository_owner": "acme",
        "repository_owner_id": "7890",
        "repository_id": "123456",
        "repository_visibility": "private",
        "actor_id": "4242",
        "actor": "octocat",
        "workflow": "agent",
        "workflow_ref": "acme/api/.github/workflows/agent.yml@refs/heads/main",
        "workflow_sha": sha,
        "job_workflow_ref": "acme/api/.github/workflows/agent.yml@refs/heads/main",
        "job_workflow_sha": sha,
        "head_ref": "",
        "base_ref": "",
        "event_name": "push",
        "ref_type": "branch",
        "ref_protected": "true",
        "run_id": "8100200300",
        "run_number": "17",
        "run_attempt": "1",
        "runner_environment": "github-hosted",
        "iss": issuer_url,
        **_times(overrides.pop("now", None)),
    }
    claims.update(overrides)
    return claims


def gitlab_claims(issuer_url: str, audience: str, **overrides: Any) -> dict[str, Any]:
    """Claims shaped like a GitLab CI ``id_tokens`` token for a push to main of acme/api."""
    sha = "1d2c3b4a5f6e7d8c9b0a1f2e3d4c5b6a7f8e9d0c"
    host = issuer_url.split("://", 1)[-1]
    claims: dict[str, Any] = {
        "namespace_id": "72",
        "namespace_path": "acme",
        "project_id": "20",
        "project_path": "acme/api",
        "user_id": "1",
        "user_login": "sample-user",
        "user_email": "sample-user@example.com",
        "user_access_level": "maintainer",
        "pipeline_id": "574",
        "pipeline_source": "push",
        "job_id": "302",
        "ref": "main",
        "ref_type": "branch",
        "ref_path": "refs/heads/main",
        "ref_protected": "true",
        "runner_id": 1,
        "runner_environment": "gitlab-hosted",
        "sha": sha,
        "project_visibility": "private",
        "ci_config_ref_uri": f"{host}/acme/api//.gitlab-ci.yml@refs/heads/main",
        "ci_config_sha": sha,
        "jti": str(uuid.uuid4()),
        "iss": issuer_url,
        "sub": "project_path:acme/api:ref_type:branch:ref:main",
        "aud": audience,
        **_times(overrides.pop("now", None)),
    }
    claims.update(overrides)
    return claims


_POOL_SIZE = 8
_key_pool: list[rsa.RSAPrivateKey] = []
_pool_next = 0
_pool_lock = threading.Lock()


def _new_key(bits: int) -> rsa.RSAPrivateKey:
    """A 2048-bit key from a small process-wide pool (generating one costs ~0.1 s); any
    ``_POOL_SIZE`` consecutive calls return distinct keys."""
    global _pool_next
    if bits != 2048:
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    with _pool_lock:
        if len(_key_pool) < _POOL_SIZE:
            _key_pool.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
            return _key_pool[-1]
        key = _key_pool[_pool_next % _POOL_SIZE]
        _pool_next += 1
        return key


class OIDCIssuer:
    """An OIDC issuer served by uvicorn on 127.0.0.1 in a background thread."""

    def __init__(self) -> None:
        self.keys: dict[str, rsa.RSAPrivateKey] = {}
        self.current_kid = ""
        self.hits: Counter[str] = Counter()
        self.requests: list[str] = []
        self.routes: dict[str, Handler] = {}
        self.discovery_overrides: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.reset()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> OIDCIssuer:
        """Start serving; returns self once the port is bound."""
        app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["GET", "POST"])])
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="error", lifespan="off", ws="none"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the test OIDC issuer did not start")
            time.sleep(0.005)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        """Stop serving and join the thread."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)

    def __enter__(self) -> OIDCIssuer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self) -> None:
        """Back to a fresh state: one new signing key, no overrides, counters at zero."""
        with self._lock:
            self.keys.clear()
            self.hits.clear()
            self.requests.clear()
        self.routes.clear()
        self.discovery_overrides.clear()
        self.rotate()

    # -- keys and tokens -------------------------------------------------------------------

    def add_key(self, kid: str | None = None, *, bits: int = 2048) -> str:
        """Publish a new RSA key (not used for signing until :meth:`rotate` or ``kid=``)."""
        kid = kid or uuid.uuid4().hex[:16]
        with self._lock:
            self.keys[kid] = _new_key(bits)
        return kid

    def rotate(self) -> str:
        """Publish a new key and sign with it from now on; returns its kid."""
        kid = self.add_key()
        self.current_kid = kid
        return kid

    def remove_key(self, kid: str) -> None:
        """Stop publishing ``kid`` (tokens signed with it no longer verify after a refresh)."""
        with self._lock:
            del self.keys[kid]

    def jwks(self) -> dict[str, Any]:
        """The public JWKS as served."""
        with self._lock:
            items = list(self.keys.items())
        keys = []
        for kid, key in items:
            public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
            keys.append({**public, "kid": kid, "use": "sig", "alg": "RS256"})
        return {"keys": keys}

    def mint(
        self,
        claims: Mapping[str, Any],
        *,
        kid: str | None = None,
        signing_kid: str | None = None,
        **header: Any,
    ) -> str:
        """Sign ``claims`` with RS256. ``kid`` goes in the header, ``signing_kid`` (default:
        the same) picks the key that actually signs; extra keyword args become header members."""
        header_kid = kid or self.current_kid
        key = self.keys[signing_kid or header_kid]
        # PyJWS, not jwt.encode: tests need claims that PyJWT would refuse to produce.
        payload = json.dumps(dict(claims)).encode()
        return jwt.PyJWS().encode(
            payload, key, algorithm="RS256", headers={"kid": header_kid, **header}
        )

    def github_claims(self, audience: str, **overrides: Any) -> dict[str, Any]:
        """:func:`github_claims` issued by this server."""
        return github_claims(self.url, audience, **overrides)

    def gitlab_claims(self, audience: str, **overrides: Any) -> dict[str, Any]:
        """:func:`gitlab_claims` issued by this server."""
        return gitlab_claims(self.url, audience, **overrides)

    # -- HTTP ------------------------------------------------------------------------------

    def _handle(self, request: Request) -> Response:
        path = request.url.path
        with self._lock:
            self.hits[path] += 1
            self.requests.append(str(request.url))
        if path in self.routes:
            return self.routes[path](request)
        if path == DISCOVERY_PATH:
            document = {
                "issuer": self.url,
                "jwks_uri": self.url + JWKS_PATH,
                "subject_types_supported": ["public", "pairwise"],
                "response_types_supported": ["id_token"],
                "id_token_signing_alg_values_supported": ["RS256"],
                **self.discovery_overrides,
            }
            return JSONResponse(document)
        if path == JWKS_PATH:
            return JSONResponse(self.jwks())
        return Response("not found", status_code=404)
