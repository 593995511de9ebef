"""OIDC verification and trust-policy evaluation throughput.

Baseline, same run, same tokens: a bare ``jwt.decode`` (PyJWT, RS256, audience and issuer
checked, key already in hand). Airlock's ``TokenVerifier.verify`` adds the allowlist, header and
claim checks, the key lookup in the cached JWKS and the replay cache; the ratio says what that
costs. The policy evaluation is timed against the same baseline to show where the time goes.

    .venv/bin/python bench/oidc_verify.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import jwt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from airlock.oidc import JWKSCache, TokenVerifier
from airlock.policy.broker_config import parse_broker_config
from airlock.policy.trust import compile_trust_policy
from tests.support.oidc_issuer import OIDCIssuer

AUDIENCE = "https://airlock.bench"


def timed(label: str, items: list[str], fn: Callable[[str], object]) -> float:
    samples = []
    for item in items:
        start = time.perf_counter()
        fn(item)
        samples.append(time.perf_counter() - start)
    total = sum(samples)
    ordered = sorted(samples)
    p99 = ordered[int(len(ordered) * 0.99) - 1]
    print(
        f"{label:<34} {len(items) / total:>10,.0f}/s   p50 {statistics.median(samples) * 1e6:7.1f} µs"
        f"   p99 {p99 * 1e6:7.1f} µs"
    )
    return total / len(items)


def policy_text(url: str, rules: int) -> str:
    body = "".join(
        f"""
  - id: rule-{n}
    issuer: github
    claims: {{repository_id: "{100000 + n}", ref: "refs/heads/*", event_name: [push, workflow_dispatch]}}
    grants: [db]
"""
        for n in range(rules)
    )
    head = f"""
issuers: [{{name: github, url: "{url}", audience: "{AUDIENCE}", platform: github}}]
grants: {{db: {{provider: postgres}}}}
rules:"""
    return textwrap.dedent(head) + body


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer tokens")
    count = 500 if parser.parse_args().quick else 3000
    with OIDCIssuer() as issuer:
        tokens = [issuer.mint(issuer.github_claims(AUDIENCE)) for _ in range(count)]
        public = issuer.keys[issuer.current_kid].public_key()
        policy = compile_trust_policy(parse_broker_config(policy_text(issuer.url, 200)))
        keys = JWKSCache()
        verifier = TokenVerifier(policy.issuer_configs(), keys=keys)
        verifier.verify(issuer.mint(issuer.github_claims(AUDIENCE)))  # warm the key cache
        print(f"{count} RS256 tokens (2048-bit), 200-rule policy, keys cached\n")

        def bare(token: str) -> object:
            return jwt.decode(
                token, public, algorithms=["RS256"], audience=AUDIENCE, issuer=issuer.url
            )

        base = timed("baseline: bare jwt.decode", tokens, bare)
        ours = timed("airlock TokenVerifier.verify", tokens, verifier.verify)
        claims = issuer.github_claims(AUDIENCE, repository_id="100199")
        evaluate = timed(
            "trust policy evaluate (200 rules)",
            tokens,
            lambda _: policy.evaluate("github", claims, ["db"]),
        )
        keys.close()
    print(f"\nverify / bare decode time ratio: {ours / base:.2f}x")
    print(f"policy evaluate / bare decode time ratio: {evaluate / base:.2f}x")


if __name__ == "__main__":
    main()
