"""Discovery and JWKS fetching against a real server: caps, origins, redirects, rotation,
failure handling (fail closed, without hammering the issuer)."""

from __future__ import annotations

import json

import jwt
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from tests.oidc.conftest import AUDIENCE, VerifierFactory
from tests.support.oidc_issuer import DISCOVERY_PATH, JWKS_PATH, OIDCIssuer

from airlock.errors import ExitCode
from airlock.oidc import IssuerConfig, IssuerUnavailable, JWKSCache, OIDCError


def assert_unavailable(verifier_call: object, token: str) -> IssuerUnavailable:
    with pytest.raises(IssuerUnavailable) as caught:
        verifier_call.verify(token)  # type: ignore[attr-defined]
    err = caught.value
    assert err.exit_code == ExitCode.UNAVAILABLE
    assert err.reason == "issuer-unavailable"
    assert token.rsplit(".", 1)[-1] not in f"{err} {err.detail} {err!r}"
    return err


def test_discovery_naming_another_issuer_is_refused(
    oidc_issuer: OIDCIssuer, make_verifier: VerifierFactory
) -> None:
    oidc_issuer.discovery_overrides["issuer"] = "https://elsewhere.test"
    err = assert_unavailable(make_verifier(), oidc_issuer.mint(oidc_issuer.github_claims(AUDIENCE)))
    assert "names issuer" in err.detail
    assert oidc_issuer.hits[JWKS_PATH] == 0


def test_jwks_uri_on_another_host_is_never_fetched(
    oidc_issuer: OIDCIssuer, attacker: OIDCIssuer, make_verifier: VerifierFactory
) -> None:
    oidc_issuer.discovery_overrides["jwks_uri"] = attacker.url + JWKS_PATH
    err = assert_unavailable(make_verifier(), oidc_issuer.mint(oidc_issuer.github_claims(AUDIENCE)))
    assert "not on the host" in err.detail
    assert sum(attacker.hits.values()) == 0


def test_redirect_to_another_host_is_not_followed(
    oidc_issuer: OIDCIssuer, attacker: OIDCIssuer, make_verifier: VerifierFactory
) -> None:
    oidc_issuer.routes[JWKS_PATH] = lambda _: RedirectResponse(attacker.url + JWKS_PATH)
    assert_unavailable(make_verifier(), oidc_issuer.mint(oidc_issuer.github_claims(AUDIENCE)))
    assert oidc_issuer.hits[JWKS_PATH] == 1
    assert sum(attacker.hits.values()) == 0


def test_redirect_within_the_issuer_is_followed(
    oidc_issuer: OIDCIssuer, make_verifier: VerifierFactory
) -> None:
    oidc_issuer.routes[JWKS_PATH] = lambda _: RedirectResponse("/keys/v2")
    oidc_issuer.routes["/keys/v2"] = lambda _: JSONResponse(oidc_issuer.jwks())
    token = oidc_issuer.mint(oidc_issuer.github_claims(AUDIENCE))
    assert make_verifier().verify(token).key_id == oidc_issuer.current_kid
    assert oidc_issuer.hits["/keys/v2"] == 1


def test_redirect_loop_is_bounded(oidc_issuer: OIDCIssuer, make_verifier: VerifierFactory) -> None:
    oidc_issuer.routes[JWKS_PATH] = lambda _: RedirectResponse(JWKS_PATH)
    err = assert_unavailable(make_verifier(), oidc_issuer.mint(oidc_issuer.github_claims(AUDIENCE)))
    assert "redirects" in err.detail
    assert oidc_issuer.hits[JWKS_PATH] == 4


def test_oversized_jwks_is_refused(oidc_issuer: OIDCIssuer, make_verifier: VerifierFactory) -> None:
    jwks = oidc_issuer.jwks()
    jwks["padding"] = "x" * 300_000
    oidc_issuer.routes[JWKS_PATH] = lambda _: JSONResponse(jwks)
    err = assert_unavailable(make_verifier(), oidc_issuer.mint(oidc_issuer.github_claims(AUDIENCE)))
    assert "more than" in err.detail


def test_oversized_chunked_jwks_is_refused(
    oidc_issuer: OIDCIssuer, make_verifier: VerifierFactory
) -> None:
    from starlette.responses import StreamingResponse

    def chunks() -> object:
        for _ in range(100):
            yield b" " * 8192

    oidc_issuer.routes[JWKS_PATH] = lambda _: StreamingResponse(chunks())  # type: ignore[arg-type]
    err = assert_unavailable(
        make_verifier(max_bytes=64 * 1024), oidc_issuer.mint(oidc_issuer.github_claims(AUDIENCE))
    )
    assert "more than 65536 bytes" in err.detail


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1, 2]", b'{"keys": "nope"}', b"{}"],
    ids=["not-json", "array", "keys-not-list", "no-keys"],
)
def test_nonsense_jwks_fails_closed(
    oidc_issuer: OIDCIssuer, make_verifier: VerifierFactory, body: bytes
) -> None:
    oidc_issuer.routes[JWKS_PATH] = lambda _: Response(body, media_type="application/json")
    assert_unavailable(make_verifier(), oidc_issuer.mint(oidc_issuer.github_claims(AUDIENCE)))


def test_issuer_down_fails_closed_and_is_not_hammered(
    oidc_issuer: OIDCIssuer, make_verifier: VerifierFactory
) -> None:
    oidc_issuer.routes[DISCOVERY_PATH] = lambda _: Response("down", status_code=503)
    verifier = make_verifier(cooldown=30.0)
    for _ in range(10):
        err = assert_unavailable(verifier, oidc_issuer.mint(oidc_issuer.github_claims(AUDIENCE)))
        assert "503" in err.detail
    assert oidc_issuer.hits[DISCOVERY_PATH] == 1


def test_unreachable_issuer_fails_closed() -> None:
    with OIDCIssuer() as server:
        url = server.url
        token = server.mint(server.github_claims(AUDIENCE))
    issuer = IssuerConfig(name="gone", url=url, audience=AUDIENCE)
    from airlock.oidc import TokenVerifier

    with TokenVerifier([issuer]) as verifier:
        err = assert_unavailable(verifier, token)
        assert "ConnectError" in err.detail


def test_rotation_new_key_is_picked_up_and_removed_key_refused(
    oidc_issuer: OIDCIssuer, make_verifier: VerifierFactory
) -> None:
    verifier = make_verifier(cooldown=0.0)
    old = oidc_issuer.current_kid
    verifier.verify(oidc_issuer.mint(oidc_issuer.github_claims(AUDIENCE)))
    new = oidc_issuer.rotate()
    assert verifier.verify(oidc_issuer.mint(oidc_issuer.github_claims(AUDIENCE))).key_id == new
    assert oidc_issuer.hits[JWKS_PATH] == 2
    # the old key keeps working while cached; once the issuer drops it, a fetch refuses it
    token = oidc_issuer.mint(oidc_issuer.github_claims(AUDIENCE), kid=old)
    assert verifier.verify(token).key_id == old
    signed_by_old = oidc_issuer.mint(oidc_issuer.github_claims(AUDIENCE), kid=old)
    oidc_issuer.remove_key(old)
    with pytest.raises(OIDCError) as caught:
        make_verifier().verify(signed_by_old)
    assert caught.value.reason == "unknown-key"


def test_duplicate_kids_are_ignored(
    oidc_issuer: OIDCIssuer, make_verifier: VerifierFactory
) -> None:
    jwks = oidc_issuer.jwks()
    other = oidc_issuer.add_key()
    twin = next(k for k in oidc_issuer.jwks()["keys"] if k["kid"] == other)
    jwks["keys"].append({**twin, "kid": oidc_issuer.current_kid})
    oidc_issuer.routes[JWKS_PATH] = lambda _: JSONResponse(jwks)
    with pytest.raises(OIDCError) as caught:
        make_verifier().verify(oidc_issuer.mint(oidc_issuer.github_claims(AUDIENCE)))
    assert caught.value.reason == "unknown-key"


def test_short_rsa_keys_are_ignored(
    oidc_issuer: OIDCIssuer, make_verifier: VerifierFactory
) -> None:
    weak = oidc_issuer.add_key("weak", bits=1024)
    with pytest.warns(jwt.warnings.InsecureKeyLengthWarning):
        token = oidc_issuer.mint(oidc_issuer.github_claims(AUDIENCE), kid=weak)
    with pytest.raises(OIDCError) as caught:
        make_verifier().verify(token)
    assert caught.value.reason == "unknown-key"


def test_private_members_in_jwks_are_stripped(
    oidc_issuer: OIDCIssuer, make_verifier: VerifierFactory
) -> None:
    from jwt.algorithms import RSAAlgorithm

    private = json.loads(RSAAlgorithm.to_jwk(oidc_issuer.keys[oidc_issuer.current_kid]))
    jwks = {"keys": [{**private, "kid": oidc_issuer.current_kid, "use": "sig"}]}
    oidc_issuer.routes[JWKS_PATH] = lambda _: JSONResponse(jwks)
    token = oidc_issuer.mint(oidc_issuer.github_claims(AUDIENCE))
    assert make_verifier().verify(token).key_id == oidc_issuer.current_kid


def test_keys_are_cached_across_tokens(
    oidc_issuer: OIDCIssuer, make_verifier: VerifierFactory
) -> None:
    verifier = make_verifier()
    for _ in range(25):
        verifier.verify(oidc_issuer.mint(oidc_issuer.github_claims(AUDIENCE)))
    assert oidc_issuer.hits[JWKS_PATH] == 1
    assert oidc_issuer.hits[DISCOVERY_PATH] == 1


def test_request_counting_route_sees_plain_get(oidc_issuer: OIDCIssuer) -> None:
    seen: list[str] = []

    def record(request: Request) -> Response:
        seen.append(request.method)
        return JSONResponse(oidc_issuer.jwks())

    oidc_issuer.routes[JWKS_PATH] = record
    keys = JWKSCache()
    try:
        issuer = IssuerConfig(name="github", url=oidc_issuer.url, audience=AUDIENCE)
        assert keys.get_key(issuer, oidc_issuer.current_kid).kty == "RSA"
    finally:
        keys.close()
    assert seen == ["GET"]


def test_cold_start_fetch_is_single_flight(
    oidc_issuer: OIDCIssuer, make_verifier: VerifierFactory
) -> None:
    import threading
    import time

    def slow(_: Request) -> Response:
        time.sleep(0.3)
        return JSONResponse(oidc_issuer.jwks())

    oidc_issuer.routes[JWKS_PATH] = slow
    verifier = make_verifier()
    tokens = [oidc_issuer.mint(oidc_issuer.github_claims(AUDIENCE)) for _ in range(16)]
    barrier = threading.Barrier(len(tokens))
    accepted: list[str] = []

    def verify(token: str) -> None:
        barrier.wait()
        accepted.append(verifier.verify(token).jti)

    threads = [threading.Thread(target=verify, args=(t,)) for t in tokens]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(accepted) == len(tokens)
    assert oidc_issuer.hits[JWKS_PATH] == 1
    assert oidc_issuer.hits[DISCOVERY_PATH] == 1


@pytest.mark.parametrize("kwargs", [{"ttl": 0}, {"refresh_cooldown": -1}, {"timeout": 0}])
def test_nonsense_cache_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="positive"):
        JWKSCache(**kwargs)


def test_origin_comparison_fills_in_default_ports() -> None:
    from airlock.oidc.issuers import origin_of

    assert origin_of("https://Token.Example:443/x") == origin_of("https://token.example/jwks")
    assert origin_of("https://token.example:8443/") != origin_of("https://token.example/")
    assert origin_of("https://token.example:99999/")[2] == -1
