"""Each built-in rule: a positive sample is masked (only its secret part), a near miss is not.

Samples are assembled at run time from prefixes and filler so no token-shaped literal is stored.
"""

from __future__ import annotations

import base64
import json

import pytest
from tests.mask.helpers import ALNUM, make, rand

from airlock.mask import BUILTIN_RULES

UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def _b64url(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def _pem(kind: str, end: bool = True) -> str:
    body = "\n".join(rand(64, ALNUM + "+/", seed=i) for i in range(20))
    block = f"-----BEGIN {kind}-----\n{body}"
    return block + (f"\n-----END {kind}-----" if end else "")


def _jwt() -> str:
    header = _b64url({"alg": "HS256", "typ": "JWT"})
    payload = _b64url({"sub": "1234567890", "name": "test", "iat": 1516239022})
    return f"{header}.{payload}.{rand(43, ALNUM + '-_')}"


# (rule id, text around the secret, the secret part that must disappear)
POSITIVE: list[tuple[str, str, str]] = [
    ("aws-access-key-id", "key={} ok", "AK" + "IA" + rand(16, UPPER)),
    ("aws-access-key-id", "id: {}\n", "AS" + "IA" + rand(16, UPPER, seed=2)),
    ("aws-secret-access-key", "aws_secret_access_key = {}\n", rand(40, ALNUM + "/+")),
    ("aws-secret-access-key", "AWS_SECRET_ACCESS_KEY: {}", rand(40, ALNUM + "/+", seed=3)),
    ("aws-secret-access-key", '{{"SecretAccessKey": "{}"}}', rand(40, ALNUM + "/+", seed=4)),
    ("github-token", "token {} used", "gh" + "p_" + rand(36)),
    ("github-token", "GITHUB_TOKEN={}", "gh" + "s_" + rand(36, seed=5)),
    ("github-token", "x {}", "gh" + "o_" + rand(36, seed=6)),
    ("github-fine-grained-pat", "pat={}", "github" + "_pat_" + rand(22) + "_" + rand(59)),
    ("gitlab-token", "PRIVATE-TOKEN: {}", "gl" + "pat-" + rand(20, ALNUM + "_-")),
    ("gitlab-token", "runner {} ok", "gl" + "rt-" + rand(20, seed=8)),
    ("gitlab-token", "deploy {} ok", "gl" + "dt-" + rand(20, seed=9)),
    ("gitlab-token", "trigger {}", "gl" + "ptt-" + rand(40, seed=10)),
    ("gitlab-token", "scim {}", "gl" + "soat-" + rand(20, seed=11)),
    ("slack-token", "SLACK={} ", "xo" + "xb-" + "1234567890-" + rand(24)),
    ("slack-token", "u {}", "xo" + "xp-" + rand(30, ALNUM + "-")),
    (
        "slack-webhook",
        "post to {} now",
        "https://hooks.slack.com/services/T"
        + rand(8, UPPER)
        + "/B"
        + rand(8, UPPER)
        + "/"
        + rand(24),
    ),
    ("stripe-key", "stripe {}", "sk" + "_live_" + rand(24)),
    ("stripe-key", "stripe {}", "rk" + "_live_" + rand(24, seed=12)),
    ("stripe-key", "stripe {}", "sk" + "_test_" + rand(24, seed=13)),
    ("google-api-key", "key={}&q=1", "AI" + "za" + rand(35, ALNUM + "_-")),
    ("private-key-block", "cat key\n{}\ndone", _pem("RSA PRIVATE KEY")),
    ("private-key-block", "{}", _pem("OPENSSH PRIVATE KEY")),
    ("private-key-block", "x\n{}", _pem("PRIVATE KEY")),
    ("private-key-block", "{}\n", _pem("EC PRIVATE KEY", end=False)),
    ("jwt", "Authorization: Bearer {}\n", _jwt()),
    ("uri-password", "postgres://app:{}@db.internal:5432/app", rand(16, ALNUM + "!$*")),
    ("uri-password", "git clone https://x-access-token:{}@example.com/o/r", rand(20)),
]

NEAR_MISS: list[tuple[str, str]] = [
    ("aws-access-key-id", "AK" + "IA" + rand(15, UPPER)),
    ("aws-access-key-id", "ak" + "ia" + rand(16, UPPER).lower()),
    ("aws-secret-access-key", "aws_secret_access_key = " + rand(39, ALNUM + "/+")),
    ("aws-secret-access-key", "some_other_key = " + rand(40, ALNUM)),
    ("github-token", "gh" + "p_" + rand(35)),
    ("github-token", "gh" + "x_" + rand(36)),
    ("github-fine-grained-pat", "github" + "_pat_" + rand(10)),
    ("gitlab-token", "gl" + "pat-" + rand(19)),
    ("gitlab-token", "gl" + "xyz-" + rand(24)),
    ("slack-token", "xo" + "xz-" + rand(24)),
    ("slack-token", "xo" + "xb-" + rand(5)),
    ("slack-webhook", "https://hooks.slack.com/help/" + rand(24)),
    ("stripe-key", "pk" + "_live_" + rand(24)),
    ("stripe-key", "sk" + "_prod_" + rand(24)),
    ("google-api-key", "AI" + "za" + rand(34)),
    ("private-key-block", _pem("PUBLIC KEY")),
    ("private-key-block", _pem("CERTIFICATE")),
    ("jwt", _jwt().rsplit(".", 1)[0]),
    ("uri-password", "https://user@example.com/path"),
    ("uri-password", "https://example.com:8443/a@b"),
]


def test_every_builtin_rule_has_a_positive_and_a_near_miss_sample() -> None:
    ids = {rule.id for rule in BUILTIN_RULES}
    assert ids == {rule_id for rule_id, _, _ in POSITIVE}
    assert ids == {rule_id for rule_id, _ in NEAR_MISS}


@pytest.mark.parametrize(("rule_id", "around", "secret"), POSITIVE)
def test_positive_sample_is_masked(engine: str, rule_id: str, around: str, secret: str) -> None:
    text = around.format(secret)
    masked = make(engine).mask_text(text)
    assert secret not in masked
    assert f"[MASKED:{rule_id}]" in masked
    assert masked == around.format(f"[MASKED:{rule_id}]")


@pytest.mark.parametrize(("rule_id", "text"), NEAR_MISS)
def test_near_miss_is_left_alone(engine: str, rule_id: str, text: str) -> None:
    line = f"before {text} after\n"
    assert make(engine).mask_text(line) == line, rule_id


def test_uri_password_keeps_scheme_user_and_host() -> None:
    password = rand(12)
    url = f"mysql://reporting:{password}@10.0.0.5:3306/sales"
    assert make().mask_text(url) == "mysql://reporting:[MASKED:uri-password]@10.0.0.5:3306/sales"


def test_private_key_block_is_masked_across_chunks(engine: str) -> None:
    key = _pem("RSA PRIVATE KEY").encode()
    data = b"log line\n" * 50 + key + b"\nafter\n"
    masker = make(engine)
    stream = masker.stream()
    out = b"".join(stream.feed(bytes([b])) for b in data) + stream.flush()
    assert out == masker.mask_bytes(data)
    assert out.endswith(b"[MASKED:private-key-block]\nafter\n")
    assert b"PRIVATE KEY" not in out


def test_builtins_off_masks_nothing_by_shape() -> None:
    token = "gh" + "p_" + rand(36)
    assert make(builtin=False).mask_text(token) == token
