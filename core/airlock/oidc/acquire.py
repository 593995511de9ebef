"""Get the running CI job's OIDC token, for the broker's audience.

GitHub Actions hands a job a request URL and a bearer token (``ACTIONS_ID_TOKEN_REQUEST_URL`` and
``ACTIONS_ID_TOKEN_REQUEST_TOKEN``, present only with ``permissions: id-token: write``); the job
asks that URL for a token with a chosen audience. GitLab CI mints the token before the job starts
into the variable named under ``id_tokens:`` (with its ``aud``); we read that variable. No value
read or received here ever appears in an error message.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import httpx

from airlock.errors import InfrastructureUnavailable, UsageError

__all__ = [
    "DEFAULT_GITLAB_VARIABLE",
    "acquire_github_token",
    "acquire_gitlab_token",
    "acquire_token",
    "detect_platform",
]

DEFAULT_GITLAB_VARIABLE = "AIRLOCK_ID_TOKEN"
_MAX_RESPONSE_BYTES = 64 * 1024


def detect_platform(env: Mapping[str, str] | None = None) -> str | None:
    """``"github"`` or ``"gitlab"`` from the CI's own markers, or None outside CI."""
    env = os.environ if env is None else env
    if env.get("GITHUB_ACTIONS") == "true":
        return "github"
    if env.get("GITLAB_CI") == "true":
        return "gitlab"
    return None


def acquire_token(
    audience: str,
    *,
    platform: str | None = None,
    gitlab_variable: str = DEFAULT_GITLAB_VARIABLE,
    env: Mapping[str, str] | None = None,
    http: httpx.Client | None = None,
) -> str:
    """The job's OIDC token on the detected (or given) platform."""
    env = os.environ if env is None else env
    platform = platform or detect_platform(env)
    if platform == "github":
        return acquire_github_token(audience, env=env, http=http)
    if platform == "gitlab":
        return acquire_gitlab_token(gitlab_variable, env=env)
    raise UsageError(
        "cannot tell which CI platform this job runs on (neither GITHUB_ACTIONS nor GITLAB_CI is "
        "'true')",
        hint="run inside GitHub Actions or GitLab CI, or name the platform explicitly",
    )


def acquire_github_token(
    audience: str,
    *,
    env: Mapping[str, str] | None = None,
    http: httpx.Client | None = None,
    timeout: float = 10.0,
) -> str:
    """Ask GitHub Actions for a token whose ``aud`` is ``audience``."""
    env = os.environ if env is None else env
    url = env.get("ACTIONS_ID_TOKEN_REQUEST_URL", "")
    bearer = env.get("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "")
    if not url or not bearer:
        raise UsageError(
            "this GitHub Actions job cannot request an OIDC token "
            "(ACTIONS_ID_TOKEN_REQUEST_URL / ACTIONS_ID_TOKEN_REQUEST_TOKEN are not set)",
            hint="add `permissions: id-token: write` to the job (pull requests from forks never "
            "get one)",
        )
    if not audience:
        raise UsageError("an audience is required to request a GitHub OIDC token")
    client = http or httpx.Client(timeout=timeout, follow_redirects=False)
    try:
        body = _get_token_response(client, url, bearer, audience)
    finally:
        if http is None:
            client.close()
    return _token_from_response(body)


def acquire_gitlab_token(
    variable: str = DEFAULT_GITLAB_VARIABLE, *, env: Mapping[str, str] | None = None
) -> str:
    """Read the token GitLab put in ``variable`` (declared under the job's ``id_tokens:``)."""
    env = os.environ if env is None else env
    token = env.get(variable, "").strip()
    if not token:
        raise UsageError(
            f"the GitLab CI variable {variable} holding the OIDC token is not set",
            hint=f"declare it in the job: `id_tokens: {{{variable}: {{aud: <broker audience>}}}}`",
        )
    if token.count(".") != 2:
        raise UsageError(
            f"the GitLab CI variable {variable} does not hold a JWT",
            hint="declare it under the job's id_tokens:, not as an ordinary variable",
        )
    return token


def _get_token_response(client: httpx.Client, url: str, bearer: str, audience: str) -> bytes:
    request_url = httpx.URL(url).copy_merge_params({"audience": audience})
    headers = {"Authorization": f"Bearer {bearer}", "Accept": "application/json"}
    try:
        with client.stream("GET", request_url, headers=headers) as response:
            if response.status_code != 200:
                raise InfrastructureUnavailable(
                    f"GitHub refused the OIDC token request (HTTP {response.status_code})",
                    hint="check `permissions: id-token: write` and that GitHub Actions is up",
                )
            return _read_capped(response)
    except httpx.HTTPError as exc:
        raise InfrastructureUnavailable(
            f"could not reach GitHub's OIDC token endpoint ({type(exc).__name__})",
            hint="retry the job; check GitHub's status page",
        ) from exc


def _read_capped(response: httpx.Response) -> bytes:
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > _MAX_RESPONSE_BYTES:
            raise InfrastructureUnavailable("GitHub's OIDC token response is too large")
        chunks.append(chunk)
    return b"".join(chunks)


def _token_from_response(body: bytes) -> str:
    try:
        value = json.loads(body).get("value")
    except (ValueError, AttributeError, UnicodeDecodeError):
        value = None
    if not isinstance(value, str) or value.count(".") != 2:
        raise InfrastructureUnavailable(
            "GitHub's OIDC token response did not contain a token (no 'value' JWT)",
            hint="retry the job; check GitHub's status page",
        )
    return value
