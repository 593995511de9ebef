"""Getting the job's token: GitHub's request endpoint (a real local server), GitLab's variable."""

from __future__ import annotations

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from tests.oidc.conftest import AUDIENCE
from tests.support.oidc_issuer import OIDCIssuer

from airlock.errors import InfrastructureUnavailable, UsageError
from airlock.oidc import acquire_github_token, acquire_gitlab_token, acquire_token, detect_platform

REQUEST_TOKEN = "ghs_request-token-value-never-shown"


def github_env(issuer: OIDCIssuer) -> dict[str, str]:
    return {
        "GITHUB_ACTIONS": "true",
        "ACTIONS_ID_TOKEN_REQUEST_URL": f"{issuer.url}/token?api-version=2.0",
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN": REQUEST_TOKEN,
    }


def serve_tokens(issuer: OIDCIssuer) -> list[Request]:
    seen: list[Request] = []

    def handler(request: Request) -> Response:
        seen.append(request)
        if request.headers.get("authorization") != f"Bearer {REQUEST_TOKEN}":
            return Response("no", status_code=401)
        audience = request.query_params["audience"]
        return JSONResponse({"value": issuer.mint(issuer.github_claims(audience))})

    issuer.routes["/token"] = handler
    return seen


def test_github_token_is_requested_with_the_audience(oidc_issuer: OIDCIssuer) -> None:
    seen = serve_tokens(oidc_issuer)
    token = acquire_github_token(AUDIENCE, env=github_env(oidc_issuer))
    assert token.count(".") == 2
    assert seen[0].query_params["audience"] == AUDIENCE
    assert seen[0].query_params["api-version"] == "2.0"


def test_acquire_token_detects_github(oidc_issuer: OIDCIssuer) -> None:
    serve_tokens(oidc_issuer)
    env = github_env(oidc_issuer)
    assert detect_platform(env) == "github"
    assert acquire_token(AUDIENCE, env=env).count(".") == 2


def test_github_without_id_token_permission_says_what_to_add() -> None:
    with pytest.raises(UsageError) as caught:
        acquire_github_token(AUDIENCE, env={"GITHUB_ACTIONS": "true"})
    assert "id-token: write" in caught.value.hint


@pytest.mark.parametrize(
    ("status", "body"),
    [(403, b"forbidden"), (200, b'{"nope": 1}'), (200, b"not json"), (200, b'{"value": "x"}')],
)
def test_github_endpoint_failures_never_show_the_request_token(
    oidc_issuer: OIDCIssuer, status: int, body: bytes
) -> None:
    oidc_issuer.routes["/token"] = lambda _: Response(body, status_code=status)
    with pytest.raises(InfrastructureUnavailable) as caught:
        acquire_github_token(AUDIENCE, env=github_env(oidc_issuer))
    assert REQUEST_TOKEN not in f"{caught.value.explain()} {caught.value!r}"


def test_github_endpoint_unreachable_is_infrastructure() -> None:
    with OIDCIssuer() as server:
        env = github_env(server)
    with pytest.raises(InfrastructureUnavailable, match="could not reach"):
        acquire_github_token(AUDIENCE, env=env, timeout=1.0)


def test_gitlab_token_comes_from_the_named_variable() -> None:
    env = {"GITLAB_CI": "true", "BROKER_ID_TOKEN": "a.b.c"}
    assert acquire_gitlab_token("BROKER_ID_TOKEN", env=env) == "a.b.c"
    assert acquire_token(AUDIENCE, gitlab_variable="BROKER_ID_TOKEN", env=env) == "a.b.c"


def test_gitlab_missing_variable_says_how_to_declare_it() -> None:
    with pytest.raises(UsageError) as caught:
        acquire_gitlab_token(env={"GITLAB_CI": "true"})
    assert "id_tokens" in caught.value.hint
    assert "AIRLOCK_ID_TOKEN" in caught.value.message


def test_gitlab_variable_that_is_not_a_jwt_is_refused_without_echo() -> None:
    with pytest.raises(UsageError) as caught:
        acquire_gitlab_token(env={"AIRLOCK_ID_TOKEN": "glpat-secretvalue"})
    assert "glpat-secretvalue" not in caught.value.explain()


def test_outside_ci_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="cannot tell which CI platform"):
        acquire_token(AUDIENCE, env={})
