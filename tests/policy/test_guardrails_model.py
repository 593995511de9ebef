"""Policy models for gateways and guardrails: shapes, refusals with paths, HTTP matching."""

from __future__ import annotations

import pytest

from airlock.policy import PolicyError, parse_policy
from airlock.policy.guardrails import (
    GuardrailDefaults,
    GuardrailRule,
    HttpRequestInfo,
    decide_http,
    rules_for_gateway,
)

FULL = """
gateways:
  - name: appdb
    kind: postgres
    listen: 127.0.0.1:0
    upstream: {host: db.internal, port: 5432, database: app, tls: prefer}
    credential: {env: {user: PGUSER_UPSTREAM, password: PGPASSWORD_UPSTREAM}}
    mask_columns: ["*.password", "users.email"]
    mask_values: true
  - name: forge
    kind: http
    listen: "[::1]:8081"
    upstream: https://api.github.com
    credential: {env: {bearer: GITHUB_TOKEN}}
    record_bodies: 65536
    mask_json_fields: ["*.token", "password"]
guardrails:
  - id: no-drop
    sql: {kinds: [drop, truncate], tables: ["public.*"], text: "(?i)drop", without_where: false}
    action: require_approval
    gateways: [appdb]
  - id: no-ns-delete
    http: {methods: [DELETE], path: "/api/v1/namespaces/*", host: "*", json: {"spec.force": true}}
    action: deny
guardrail_defaults: {sql_unparsable: deny, sql_unmatched: allow, http_unmatched: allow}
"""


def test_the_documented_shape_loads() -> None:
    policy = parse_policy(FULL)
    pg, http = policy.gateways
    assert pg.kind == "postgres" and pg.listen_port == 0 and pg.upstream.tls == "prefer"
    assert http.kind == "http" and http.listen_host == "::1" and http.listen_port == 8081
    assert policy.guardrails[1].http is not None
    assert policy.guardrails[1].http.json_body == {"spec.force": True}
    assert policy.guardrail_defaults == GuardrailDefaults()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("gateways: [{name: a, kind: pg}]", "gateways[0]: kind must be postgres, http, llm or mcp"),
        (
            "gateways: [{name: a, kind: postgres, listen: '0.0.0.0:5432', "
            "upstream: {host: h, database: d}, credential: {grant: g}}]",
            "is not loopback",
        ),
        (
            "gateways: [{name: A, kind: http, upstream: 'https://x'}]",
            "gateway name must be",
        ),
        (
            "gateways: [{name: a, kind: http, upstream: 'https://u:p@x'}]",
            "must not carry credentials",
        ),
        (
            "gateways: [{name: a, kind: postgres, upstream: {host: h, database: d}, "
            "credential: {grant: g, user: u}}]",
            "exactly one of env",
        ),
        (
            "gateways: [{name: a, kind: postgres, upstream: {host: h, database: d}, "
            "credential: {env: {user: U, password: 'P=hunter2'}}}]",
            "looks like NAME=value",
        ),
        (
            "gateways: [{name: a, kind: http, upstream: 'https://x'}, "
            "{name: a, kind: http, upstream: 'https://y'}]",
            "gateway names must be unique",
        ),
        ("guardrails: [{id: x, action: deny}]", "exactly one of sql: or http:"),
        ("guardrails: [{id: x, action: deny, sql: {}}]", "empty sql: match"),
        ("guardrails: [{id: x, action: deny, sql: {kinds: [dropp]}}]", "did you mean 'drop'"),
        ("guardrails: [{id: x, action: deny, sql: {text: 'a(?=b)'}}]", "not a valid RE2"),
        ("guardrails: [{id: x, action: block, sql: {kinds: [drop]}}]", "must be one of"),
        (
            "guardrails: [{id: x, action: deny, sql: {kinds: [drop]}, gateways: [nope]}]",
            "gateway 'nope' is not a postgres gateway",
        ),
        ("guardrails: [{id: airlock.x, action: deny, sql: {kinds: [drop]}}]", "reserved"),
        (
            "guardrails: [{id: x, action: deny, sql: {kinds: [drop]}}, "
            "{id: x, action: deny, sql: {kinds: [drop]}}]",
            "guardrail ids must be unique",
        ),
        ("guardrails: [{id: x, action: deny, http: {methods: [delete]}}]", "upper-case"),
        ("guardrail_defaults: {sql_unparsable: maybe}", "must be one of"),
    ],
)
def test_bad_policies_are_refused_with_a_path(text: str, expected: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(text)
    assert expected in str(info.value)
    assert "hunter2" not in str(info.value)


def test_http_rules_match_method_path_host_and_json() -> None:
    policy = parse_policy(FULL)
    rules = rules_for_gateway(policy.guardrails, "forge", "http")
    assert [r.id for r in rules] == ["no-ns-delete"]

    def decide(method: str, path: str, body: object = None) -> str:
        info = HttpRequestInfo(method, path, "api.example.com", body)
        return decide_http(info, rules, policy.guardrail_defaults).rule_id

    assert decide("DELETE", "/api/v1/namespaces/prod", {"spec": {"force": True}}) == "no-ns-delete"
    assert decide("DELETE", "/api/v1/namespaces/prod", {"spec": {"force": 1}}) != "no-ns-delete"
    assert decide("DELETE", "/api/v1/namespaces/prod/pods", {"spec": {"force": True}}) != (
        "no-ns-delete"
    )
    assert decide("GET", "/api/v1/namespaces/prod", {"spec": {"force": True}}) != "no-ns-delete"


def test_double_star_crosses_path_segments() -> None:
    rule = GuardrailRule.model_validate(
        {"id": "push", "http": {"methods": ["POST"], "path": "/**/git-receive-pack"},
         "action": "require_approval"}
    )  # fmt: skip
    info = HttpRequestInfo("POST", "/acme/api.git/git-receive-pack", "x")
    assert decide_http(info, [rule], GuardrailDefaults()).action == "require_approval"
