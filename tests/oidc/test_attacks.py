"""The attack catalogue: bad tokens against a real issuer over HTTP, each refused for the right
reason, and neither tier of the error ever carrying the token."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from tests.oidc.conftest import AUDIENCE, VerifierFactory
from tests.support.oidc_issuer import OIDCIssuer, b64url, forge

from airlock.errors import ConfigError, ExitCode
from airlock.oidc import IssuerConfig, OIDCError, TokenVerifier


def assert_refused(verifier: TokenVerifier, token: str, reason: str) -> OIDCError:
    """Assert ``token`` is refused with ``reason`` and that no error text carries the token."""
    with pytest.raises(OIDCError) as caught:
        verifier.verify(token)
    err = caught.value
    assert err.reason == reason, f"{err.reason}: {err.detail}"
    assert err.exit_code == ExitCode.DENIED
    signature = token.rsplit(".", 1)[-1]
    for text in (str(err), err.detail, repr(err), err.explain()):
        assert not token or token not in text
        if len(signature) > 16:
            assert signature not in text
    return err


def header_of(issuer: OIDCIssuer, **extra: Any) -> dict[str, Any]:
    return {"alg": "RS256", "typ": "JWT", "kid": issuer.current_kid, **extra}


def rs256_sign(key: rsa.RSAPrivateKey, header: dict[str, Any], claims: dict[str, Any]) -> str:
    return jwt.encode(claims, key, algorithm="RS256", headers=header)


# -- algorithm and signature -----------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_is_refused(
    oidc_issuer: OIDCIssuer, make_verifier: VerifierFactory, alg: str
) -> None:
    token = forge(header_of(oidc_issuer, alg=alg), oidc_issuer.github_claims(AUDIENCE))
    assert_refused(make_verifier(), token, "alg-not-allowed")
    assert oidc_issuer.hits["/.well-known/jwks"] == 0


def test_hs256_keyed_with_the_public_key_is_refused(
    oidc_issuer: OIDCIssuer, make_verifier: VerifierFactory
) -> None:
    public_pem = (
        oidc_issuer.keys[oidc_issuer.current_kid]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = header_of(oidc_issuer, alg="HS256")
    claims = oidc_issuer.github_claims(AUDIENCE)
    signing_input = forge(header, claims).rsplit(".", 1)[0]
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    assert_refused(make_verifier(), f"{signing_input}.{b64url(mac)}", "alg-not-allowed")


def test_rs256_refused_when_issuer_pins_es256(
    oidc_issuer: OIDCIssuer, make_verifier: VerifierFactory
) -> None:
    pinned = IssuerConfig(
        name="github", url=oidc_issuer.url, audience=AUDIENCE, algorithms=("ES256",)
    )
    token = oidc_issuer.mint(oidc_issuer.github_claims(AUDIENCE))
    assert_refused(make_verifier(issuers=[pinned]), token, "alg-not-allowed")


def test_kid_swap_is_refused(oidc_issuer: OIDCIssuer, make_verifier: VerifierFactory) -> None:
    first = oidc_issuer.current_kid
    second = oidc_issuer.add_key()
    token = oidc_issuer.mint(oidc_issuer.github_claims(AUDIENCE), kid=second, signing_kid=first)
    assert_refused(make_verifier(), token, "bad-signature")


def test_stripped_signature_is_refused(
    oidc_issuer: OIDCIssuer, make_verifier: VerifierFactory
) -> None:
    token = oidc_issuer.mint(oidc_issuer.github_claims(AUDIENCE))
    assert_refused(make_verifier(), token.rsplit(".", 1)[0] + ".", "bad-signature")


def test_truncated_signature_is_refused(
    oidc_issuer: OIDCIssuer, make_verifier: VerifierFactory
) -> None:
    token = oidc_issuer.mint(oidc_issuer.github_claims(AUDIENCE))
    assert_refused(make_verifier(), token[:-20], "bad-signature")


def test_truncated_payload_is_malformed(
    make_verifier: VerifierFactory, oidc_issuer: OIDCIssuer
) -> None:
    token = oidc_issuer.mint(oidc_issuer.github_claims(AUDIENCE))
    head, body, _ = token.split(".")
    assert_refused(make_verifier(), f"{head}.{body[: len(body) // 2]}", "malformed")


def test_tampered_payload_is_refused(
    oidc_issuer: OIDCIssuer, make_verifier: VerifierFactory
) -> None:
    token = oidc_issuer.mint(oidc_issuer.github_claims(AUDIENCE))
    head, _, signature = token.split(".")
    claims = oidc_issuer.github_claims(AUDIENCE, repository_id="1", repository="evil/api")
    body = b64url(json.dumps(claims).encode())
    assert_refused(make_verifier(), f"{head}.{body}.{signature}", "bad-signature")


def test_token_signed_by_a_foreign_key_with_a_known_kid_is_refused(
    oidc_issuer: OIDCIssuer, make_verifier: VerifierFactory
) -> None:
    foreign = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = rs256_sign(foreign, header_of(oidc_issuer), oidc_issuer.github_claims(AUDIENCE))
    assert_refused(make_verifier(), token, "bad-signature")


# -- key-location header injection: never fetched, never used -------------------------------


@pytest.mark.parametrize("member", ["jku", "x5u"])
def test_url_header_injection_is_ignored(
    oidc_issuer: OIDCIssuer, attacker: OIDCIssuer, make_verifier: VerifierFactory, member: str
) -> None:
    evil_key = attacker.keys[attacker.current_kid]
    header = {
        "alg": "RS256",
        "kid": attacker.current_kid,
        member: attacker.url + "/.well-known/jwks",
    }
    token = rs256_sign(evil_key, header, oidc_issuer.github_claims(AUDIENCE))
    assert_refused(make_verifier(), token, "unknown-key")
    assert sum(attacker.hits.values()) == 0


def test_url_header_with_the_issuers_kid_still_uses_the_issuers_key(
    oidc_issuer: OIDCIssuer, attacker: OIDCIssuer, make_verifier: VerifierFactory
) -> None:
    evil_key = attacker.keys[attacker.current_kid]
    header = header_of(oidc_issuer, jku=attacker.url + "/.well-known/jwks")
    token = rs256_sign(evil_key, header, oidc_issuer.github_claims(AUDIENCE))
    assert_refused(make_verifier(), token, "bad-signature")
    assert sum(attacker.hits.values()) == 0


@pytest.mark.parametrize("member", ["jwk", "x5c"])
def test_embedded_key_header_is_ignored(
    oidc_issuer: OIDCIssuer, attacker: OIDCIssuer, make_verifier: VerifierFactory, member: str
) -> None:
    evil_key = attacker.keys[attacker.current_kid]
    public_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(evil_key.public_key()))
    der = evil_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    embedded: Any = public_jwk if member == "jwk" else [base64.b64encode(der).decode()]
    header = header_of(oidc_issuer, **{member: embedded})
    token = rs256_sign(evil_key, header, oidc_issuer.github_claims(AUDIENCE))
    assert_refused(make_verifier(), token, "bad-signature")


# -- issuer ----------------------------------------------------------------------------------


def test_issuer_not_allowlisted_causes_no_fetch(
    oidc_issuer: OIDCIssuer, attacker: OIDCIssuer, make_verifier: VerifierFactory
) -> None:
    claims = attacker.github_claims(AUDIENCE)  # iss = the attacker's own, real, issuer
    assert_refused(make_verifier(), attacker.mint(claims), "issuer-not-allowed")
    assert sum(attacker.hits.values()) == 0
    assert sum(oidc_issuer.hits.values()) == 0


@pytest.mark.parametrize("suffix", ["/", "/x", ":443", "#"])
def test_near_miss_issuer_is_not_allowlisted(
    oidc_issuer: OIDCIssuer, make_verifier: VerifierFactory, suffix: str
) -> None:
    claims = oidc_issuer.github_claims(AUDIENCE, iss=oidc_issuer.url + suffix)
    assert_refused(make_verifier(), oidc_issuer.mint(claims), "issuer-not-allowed")


def test_missing_issuer_is_refused(oidc_issuer: OIDCIssuer, make_verifier: VerifierFactory) -> None:
    claims = oidc_issuer.github_claims(AUDIENCE)
    del claims["iss"]
    assert_refused(make_verifier(), oidc_issuer.mint(claims), "missing-claim")


# -- audience --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "aud",
    [
        "https://airlock.broker.test/",
        "https://other.service.test",
        "https://github.com/acme",
        [AUDIENCE, "https://other.service.test"],
        [],
        12345,
        None,
    ],
)
def test_wrong_audience_is_refused(
    oidc_issuer: OIDCIssuer, make_verifier: VerifierFactory, aud: Any
) -> None:
    claims = oidc_issuer.github_claims(AUDIENCE, aud=aud)
    assert_refused(make_verifier(), oidc_issuer.mint(claims), "bad-audience")


def test_single_audience_in_a_list_is_accepted(
    oidc_issuer: OIDCIssuer, make_verifier: VerifierFactory
) -> None:
    claims = oidc_issuer.github_claims(AUDIENCE, aud=[AUDIENCE])
    assert make_verifier().verify(oidc_issuer.mint(claims)).issuer == "github"


@pytest.mark.parametrize("audience", ["https://github.com/acme", "https://GitHub.com/acme-corp/"])
def test_github_default_audience_is_refused_at_config_load(audience: str) -> None:
    with pytest.raises(ConfigError, match="default audience"):
        IssuerConfig(
            name="github", url="https://token.actions.githubusercontent.com", audience=audience
        )


@pytest.mark.parametrize("alg", ["none", "HS256", "HS512"])
def test_symmetric_or_none_algorithms_are_refused_at_config_load(alg: str) -> None:
    with pytest.raises(ConfigError, match="not allowed"):
        IssuerConfig(
            name="gh",
            url="https://token.actions.githubusercontent.com",
            audience=AUDIENCE,
            algorithms=(alg,),
        )


# -- time ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shift", "reason"),
    [
        ({"exp": -120}, "expired"),
        ({"nbf": 600, "iat": 0}, "not-yet-valid"),
        ({"iat": 600, "nbf": 0}, "issued-in-future"),
        ({"iat": -1200, "nbf": -1200, "exp": 300}, "token-too-old"),
    ],
)
def test_time_claims_are_enforced(
    oidc_issuer: OIDCIssuer, make_verifier: VerifierFactory, shift: dict[str, int], reason: str
) -> None:
    now = int(time.time())
    claims = oidc_issuer.github_claims(AUDIENCE)
    claims.update({name: now + delta for name, delta in shift.items()})
    assert_refused(make_verifier(), oidc_issuer.mint(claims), reason)


@pytest.mark.parametrize(
    "shift",
    [{"iat": 30, "nbf": 30}, {"exp": -30}, {"iat": -600 - 50, "nbf": -660, "exp": 60}],
    ids=["clock-behind", "just-expired", "nearly-too-old"],
)
def test_skew_within_leeway_is_accepted(
    oidc_issuer: OIDCIssuer, make_verifier: VerifierFactory, shift: dict[str, int]
) -> None:
    now = int(time.time())
    claims = oidc_issuer.github_claims(AUDIENCE)
    claims.update({name: now + delta for name, delta in shift.items()})
    assert make_verifier().verify(oidc_issuer.mint(claims)).jti == claims["jti"]


# -- claims of the wrong type and malformed tokens ------------------------------------------


@pytest.mark.parametrize(
    ("claim", "value", "reason"),
    [
        ("exp", "9999999999", "bad-claim-type"),
        ("exp", True, "bad-claim-type"),
        ("iat", [1], "bad-claim-type"),
        ("nbf", {"t": 1}, "bad-claim-type"),
        ("jti", 12345, "bad-claim-type"),
        ("jti", "", "bad-claim-type"),
        ("jti", None, "missing-claim"),
        ("exp", None, "missing-claim"),
        ("iat", None, "missing-claim"),
        ("iss", 42, "missing-claim"),
    ],
)
def test_claims_of_the_wrong_type_are_refused(
    oidc_issuer: OIDCIssuer, make_verifier: VerifierFactory, claim: str, value: Any, reason: str
) -> None:
    claims = oidc_issuer.github_claims(AUDIENCE)
    if value is None:
        del claims[claim]
    else:
        claims[claim] = value
    assert_refused(make_verifier(), oidc_issuer.mint(claims), reason)


def test_oversized_token_is_refused_before_any_parsing_or_fetch(
    oidc_issuer: OIDCIssuer, make_verifier: VerifierFactory
) -> None:
    claims = oidc_issuer.github_claims(AUDIENCE, padding="x" * 17_000)
    assert_refused(make_verifier(), oidc_issuer.mint(claims), "token-too-large")
    assert sum(oidc_issuer.hits.values()) == 0


@pytest.mark.parametrize(
    "token",
    [
        "",
        "not-a-jwt",
        "a.b",
        "a.b.c.d.e",  # JWE compact form
        "!!!.???.sig",
        "eyJhbGciOiJSUzI1NiJ9.W10.c2ln",  # payload is a JSON array
        "ey\u00e9.eyJ9.c2ln",
    ],
)
def test_malformed_tokens_are_refused(make_verifier: VerifierFactory, token: str) -> None:
    assert_refused(make_verifier(), token, "malformed")


_B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _flip_padding_bits(segment: str) -> str:
    """The same bytes with different unused trailing bits: a non-canonical encoding."""
    assert len(segment) % 4 in (2, 3)
    return segment[:-1] + _B64URL[_B64URL.index(segment[-1]) ^ 1]


@pytest.mark.parametrize(
    ("mutate", "outcome"),
    [
        (lambda h, p, s: (h, p, s + "=" * (-len(s) % 4)), "accepted"),  # padded: PyJWT accepts
        (lambda h, p, s: (h, p, s + "!"), "bad-signature"),
        (lambda h, p, s: (h, p, s[:10] + "+" + s[10:]), "bad-signature"),
        (lambda h, p, s: (h, p, s + "==="), "bad-signature"),
        (lambda h, p, s: (h, p, s + "="), "bad-signature"),  # padding that leaves a partial quad
        (lambda h, p, s: (h, p, _flip_padding_bits(s)), "bad-signature"),
        (lambda h, p, s: (h, p[:8] + " " + p[8:], s), "bad-signature"),
        (lambda h, p, s: (h, p + "A", s), "malformed"),  # 4n+1 characters decode to nothing
        (lambda h, p, s: (" " + h, p, s), "bad-signature"),
    ],
)
def test_segments_must_be_strict_base64url(
    oidc_issuer: OIDCIssuer,
    make_verifier: VerifierFactory,
    mutate: Callable[[str, str, str], tuple[str, str, str]],
    outcome: str,
) -> None:
    token = oidc_issuer.mint(oidc_issuer.github_claims(AUDIENCE))
    mutated = ".".join(mutate(*token.split(".")))
    verifier = make_verifier()
    if outcome == "accepted":
        assert verifier.verify(mutated).claims["aud"] == AUDIENCE
    else:
        assert_refused(verifier, mutated, outcome)


def test_duplicate_claim_names_are_refused(
    oidc_issuer: OIDCIssuer, make_verifier: VerifierFactory
) -> None:
    claims = oidc_issuer.github_claims(AUDIENCE)
    body_json = json.dumps(claims)[:-1] + ', "repository_id": "1"}'
    head = b64url(json.dumps(header_of(oidc_issuer)).encode())
    token = f"{head}.{b64url(body_json.encode())}.{b64url(b'sig')}"
    assert_refused(make_verifier(), token, "malformed")


def test_crit_header_is_refused(oidc_issuer: OIDCIssuer, make_verifier: VerifierFactory) -> None:
    token = oidc_issuer.mint(oidc_issuer.github_claims(AUDIENCE), crit=["exp"], exp=1)
    assert_refused(make_verifier(), token, "unsupported-header")


def test_missing_kid_is_refused(oidc_issuer: OIDCIssuer, make_verifier: VerifierFactory) -> None:
    key = oidc_issuer.keys[oidc_issuer.current_kid]
    token = jwt.encode(oidc_issuer.github_claims(AUDIENCE), key, algorithm="RS256")
    assert_refused(make_verifier(), token, "unknown-key")


# -- replay ----------------------------------------------------------------------------------


def test_replayed_jti_is_refused(oidc_issuer: OIDCIssuer, make_verifier: VerifierFactory) -> None:
    verifier = make_verifier()
    token = oidc_issuer.mint(oidc_issuer.github_claims(AUDIENCE))
    verifier.verify(token)
    assert_refused(verifier, token, "replayed")


def test_same_jti_in_a_freshly_signed_token_is_refused(
    oidc_issuer: OIDCIssuer, make_verifier: VerifierFactory
) -> None:
    verifier = make_verifier()
    jti = str(uuid.uuid4())
    verifier.verify(oidc_issuer.mint(oidc_issuer.github_claims(AUDIENCE, jti=jti)))
    again = oidc_issuer.mint(oidc_issuer.github_claims(AUDIENCE, jti=jti, run_id="2"))
    assert_refused(verifier, again, "replayed")


def test_concurrent_double_submit_exactly_one_wins(
    oidc_issuer: OIDCIssuer, make_verifier: VerifierFactory
) -> None:
    verifier = make_verifier()
    verifier.verify(oidc_issuer.mint(oidc_issuer.github_claims(AUDIENCE)))  # warm the key cache
    token = oidc_issuer.mint(oidc_issuer.github_claims(AUDIENCE))
    barrier = threading.Barrier(20)
    outcomes: list[str] = []
    lock = threading.Lock()

    def submit() -> None:
        barrier.wait()
        try:
            verifier.verify(token)
            result = "accepted"
        except OIDCError as exc:
            result = exc.reason
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=submit) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("accepted") == 1
    assert outcomes.count("replayed") == 19


# -- unknown kid: single-flight refresh with a cooldown --------------------------------------


def _slow_jwks(issuer: OIDCIssuer, delay: float) -> None:
    def handler(_: Request) -> Response:
        time.sleep(delay)
        return JSONResponse(issuer.jwks())

    issuer.routes["/.well-known/jwks"] = handler


def test_unknown_kid_refresh_is_single_flight(
    oidc_issuer: OIDCIssuer, make_verifier: VerifierFactory
) -> None:
    verifier = make_verifier(cooldown=0.0)
    verifier.verify(oidc_issuer.mint(oidc_issuer.github_claims(AUDIENCE)))
    assert oidc_issuer.hits["/.well-known/jwks"] == 1
    _slow_jwks(oidc_issuer, 0.3)
    barrier = threading.Barrier(20)
    reasons: list[str] = []

    def spray(n: int) -> None:
        token = oidc_issuer.mint(
            oidc_issuer.github_claims(AUDIENCE),
            kid=f"random-{n}",
            signing_kid=oidc_issuer.current_kid,
        )
        barrier.wait()
        try:
            verifier.verify(token)
        except OIDCError as exc:
            reasons.append(exc.reason)

    threads = [threading.Thread(target=spray, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert reasons == ["unknown-key"] * 20
    assert oidc_issuer.hits["/.well-known/jwks"] == 2  # the first fetch, then one refresh


def test_kid_spray_is_rate_limited_by_the_cooldown(
    oidc_issuer: OIDCIssuer, make_verifier: VerifierFactory
) -> None:
    verifier = make_verifier(cooldown=30.0)
    verifier.verify(oidc_issuer.mint(oidc_issuer.github_claims(AUDIENCE)))
    for n in range(50):
        token = oidc_issuer.mint(
            oidc_issuer.github_claims(AUDIENCE),
            kid=f"spray-{n}",
            signing_kid=oidc_issuer.current_kid,
        )
        assert_refused(verifier, token, "unknown-key")
    assert oidc_issuer.hits["/.well-known/jwks"] == 1
    assert oidc_issuer.hits["/.well-known/openid-configuration"] == 1


def test_oct_key_in_jwks_is_never_used(
    oidc_issuer: OIDCIssuer, make_verifier: VerifierFactory
) -> None:
    secret = b"shared-secret-for-test-only-0123456789"
    jwks = oidc_issuer.jwks()
    jwks["keys"].append({"kty": "oct", "kid": "hmac", "k": b64url(secret), "alg": "HS256"})
    oidc_issuer.routes["/.well-known/jwks"] = lambda _: JSONResponse(jwks)
    pinned = IssuerConfig(
        name="github", url=oidc_issuer.url, audience=AUDIENCE, algorithms=("RS256",)
    )
    token = jwt.encode(
        oidc_issuer.github_claims(AUDIENCE), secret, algorithm="HS256", headers={"kid": "hmac"}
    )
    assert_refused(make_verifier(issuers=[pinned]), token, "alg-not-allowed")
    rs_token = oidc_issuer.mint(
        oidc_issuer.github_claims(AUDIENCE), kid="hmac", signing_kid=oidc_issuer.current_kid
    )
    assert_refused(make_verifier(issuers=[pinned]), rs_token, "unknown-key")
