"""The trust policy: compile-time refusals and evaluation (deny by default, deny wins,
intersection of ceiling and request, sensitive triggers, globs that never cross /)."""

from __future__ import annotations

import logging
import textwrap
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.oidc_issuer import github_claims, gitlab_claims

from airlock.errors import ConfigError
from airlock.policy.broker_config import parse_broker_config
from airlock.policy.trust import TrustPolicy, compile_trust_policy

GITHUB = "https://token.actions.githubusercontent.com"
GITLAB = "https://gitlab.com"
AUD = "https://airlock.broker.test"

HEAD = f"""
issuers:
  - {{name: github, url: {GITHUB}, audience: {AUD}}}
  - {{name: gitlab, url: {GITLAB}, audience: {AUD}}}
grants:
  db-rw: {{provider: postgres, roles: [app_rw]}}
  db-ro: {{provider: postgres, roles: [app_ro], ttl: 5m}}
  gh-write: {{provider: github, permissions: {{contents: write}}}}
  deploy: {{provider: aws, role_arn: "arn:aws:iam::1:role/deploy", ttl: 1h}}
"""


def policy(rules: str) -> TrustPolicy:
    return compile_trust_policy(
        parse_broker_config(HEAD + "rules:\n" + textwrap.indent(textwrap.dedent(rules), "  "))
    )


def problems(rules: str) -> str:
    with pytest.raises(ConfigError) as caught:
        policy(rules)
    return caught.value.message


def gh(**overrides: Any) -> dict[str, Any]:
    return github_claims(GITHUB, AUD, **overrides)


def gl(**overrides: Any) -> dict[str, Any]:
    return gitlab_claims(GITLAB, AUD, **overrides)


MAIN = """
- id: api-main
  issuer: github
  claims: {repository_id: "123456", repository_owner_id: "7890", ref: refs/heads/main, event_name: [push, workflow_dispatch]}
  grants: [db-rw, gh-write]
"""

# -- evaluation -------------------------------------------------------------------------------


def test_matching_rule_grants_the_intersection_in_request_order() -> None:
    decision = policy(MAIN).evaluate("github", gh(), ["gh-write", "deploy", "db-rw"])
    assert decision.allowed
    assert decision.rule_id == "api-main"
    assert decision.grants == ("gh-write", "db-rw")
    assert decision.not_granted == ("deploy",)
    assert "deploy" in decision.reason_detail


def test_deny_by_default_without_rules() -> None:
    decision = policy("[]").evaluate("github", gh(), ["db-rw"])
    assert not decision.allowed
    assert decision.grants == ()
    assert "no rule" in decision.reason_public


def test_request_outside_the_ceiling_is_denied() -> None:
    decision = policy(MAIN).evaluate("github", gh(), ["deploy"])
    assert not decision.allowed
    assert decision.rule_id == "api-main"
    assert "none of the requested grants" in decision.reason_public


def test_empty_request_and_unknown_issuer_are_denied() -> None:
    compiled = policy(MAIN)
    assert not compiled.evaluate("github", gh(), []).allowed
    assert "not configured" in compiled.evaluate("bitbucket", gh(), ["db-rw"]).reason_public


def test_denial_names_rule_and_claim_coarsely_and_value_precisely() -> None:
    decision = policy(MAIN).evaluate("github", gh(ref="refs/heads/dev"), ["db-rw"])
    assert not decision.allowed
    assert decision.rule_id == "api-main"
    assert "'api-main'" in decision.reason_public
    assert "'ref'" in decision.reason_public
    assert "refs/heads/dev" not in decision.reason_public
    assert "claim ref = 'refs/heads/dev' is not 'refs/heads/main'" in decision.reason_detail


def test_renamed_repository_with_another_id_is_denied() -> None:
    # acme/api was deleted and someone re-created the name: same names, new immutable id.
    decision = policy(MAIN).evaluate("github", gh(repository_id="999999"), ["db-rw"])
    assert not decision.allowed
    assert "'repository_id'" in decision.reason_public


def test_repository_transferred_to_another_owner_is_denied() -> None:
    decision = policy(MAIN).evaluate("github", gh(repository_owner_id="31337"), ["db-rw"])
    assert not decision.allowed
    assert "repository_owner_id" in decision.reason_detail


@pytest.mark.parametrize("value", [123456, ["123456"], None, True])
def test_claim_of_the_wrong_type_never_matches(value: Any) -> None:
    claims = gh(repository_id=value)
    decision = policy(MAIN).evaluate("github", claims, ["db-rw"])
    assert not decision.allowed
    assert "not a string" in decision.reason_detail


def test_absent_claim_is_reported() -> None:
    claims = gh()
    del claims["ref"]
    decision = policy(MAIN).evaluate("github", claims, ["db-rw"])
    assert "claim ref is absent" in decision.reason_detail


def test_deny_rule_wins_over_a_matching_allow_rule() -> None:
    rules = (
        MAIN
        + """
- id: freeze
  issuer: github
  effect: deny
  claims: {repository_id: "123456"}
  grants: [gh-write]
"""
    )
    compiled = policy(rules)
    denied = compiled.evaluate("github", gh(), ["db-rw", "gh-write"])
    assert not denied.allowed
    assert denied.rule_id == "freeze"
    assert "deny rule 'freeze'" in denied.reason_public
    # a deny rule that lists grants only covers those
    assert compiled.evaluate("github", gh(), ["db-rw"]).allowed


def test_deny_rule_without_grants_covers_everything() -> None:
    rules = (
        MAIN
        + """
- id: no-sandbox
  issuer: github
  effect: deny
  claims: {actor: [dependabot*, "*-bot"]}
"""
    )
    compiled = policy(rules)
    assert not compiled.evaluate("github", gh(actor="dependabot[bot]"), ["db-rw"]).allowed
    assert not compiled.evaluate("github", gh(actor="release-bot"), ["db-rw"]).allowed
    assert compiled.evaluate("github", gh(actor="octocat"), ["db-rw"]).allowed


def test_best_rule_is_the_one_granting_most_first_in_file_order_on_ties() -> None:
    rules = (
        MAIN
        + """
- id: api-any-branch
  issuer: github
  claims: {repository_id: "123456", ref: "refs/heads/*"}
  grants: [db-ro, db-rw, gh-write]
- id: api-ro
  issuer: github
  claims: {repository_id: "123456"}
  grants: [db-ro]
"""
    )
    compiled = policy(rules)
    assert compiled.evaluate("github", gh(), ["db-rw", "db-ro"]).rule_id == "api-any-branch"
    assert compiled.evaluate("github", gh(), ["db-rw"]).rule_id == "api-main"
    assert compiled.evaluate("github", gh(ref="refs/tags/v1"), ["db-ro"]).rule_id == "api-ro"


# -- globs ------------------------------------------------------------------------------------

GLOBS = """
- id: tags
  issuer: github
  claims: {repository_id: "123456", ref: "refs/tags/v*", job_workflow_ref: "acme/workflows/.github/workflows/*.yml@refs/heads/main"}
  grants: [deploy]
"""


@pytest.mark.parametrize(
    ("ref", "workflow", "allowed"),
    [
        ("refs/tags/v1.2.3", "acme/workflows/.github/workflows/deploy.yml@refs/heads/main", True),
        ("refs/tags/v1/evil", "acme/workflows/.github/workflows/deploy.yml@refs/heads/main", False),
        ("refs/tags/v1", "acme/workflows/.github/workflows/sub/x.yml@refs/heads/main", False),
        ("refs/tags/v1", "acme/workflows/.github/workflows/deploy.yml@refs/heads/dev", False),
        ("xrefs/tags/v1", "acme/workflows/.github/workflows/deploy.yml@refs/heads/main", False),
        ("refs/tags/v1\n", "acme/workflows/.github/workflows/deploy.yml@refs/heads/main", False),
        ("refs/heads/v1", "acme/workflows/.github/workflows/deploy.yml@refs/heads/main", False),
    ],
)
def test_globs_are_anchored_and_never_cross_a_slash(ref: str, workflow: str, allowed: bool) -> None:
    decision = policy(GLOBS).evaluate("github", gh(ref=ref, job_workflow_ref=workflow), ["deploy"])
    assert decision.allowed is allowed


def test_glob_metacharacters_other_than_star_are_literal() -> None:
    rules = """
- id: dots
  issuer: github
  claims: {repository_id: "123456", environment: "prod.[a-z]+"}
  grants: [deploy]
"""
    compiled = policy(rules)
    assert compiled.evaluate("github", gh(environment="prod.[a-z]+"), ["deploy"]).allowed
    assert not compiled.evaluate("github", gh(environment="prodXab"), ["deploy"]).allowed


@settings(max_examples=200, deadline=None)
@given(
    prefix=st.text(alphabet="abc-", max_size=4),
    middle=st.text(alphabet="abc/-.", max_size=12),
)
def test_star_matches_exactly_the_slash_free_strings(prefix: str, middle: str) -> None:
    rules = f"""
- id: g
  issuer: github
  claims: {{repository_id: "123456", environment: "{prefix}*"}}
  grants: [deploy]
"""
    compiled = policy(rules)
    allowed = compiled.evaluate("github", gh(environment=prefix + middle), ["deploy"]).allowed
    assert allowed is ("/" not in middle)


# -- sensitive triggers -----------------------------------------------------------------------

ANY_EVENT = """
- id: api
  issuer: github
  claims: {repository_id: "123456"}
  grants: [db-ro]
"""


@pytest.mark.parametrize("event", ["pull_request_target", "workflow_run"])
def test_sensitive_github_triggers_are_refused_unless_named(event: str) -> None:
    decision = policy(ANY_EVENT).evaluate("github", gh(event_name=event), ["db-ro"])
    assert not decision.allowed
    assert "allow_events" in decision.reason_detail
    named = ANY_EVENT.replace("grants: [db-ro]", f"grants: [db-ro]\n  allow_events: [{event}]")
    assert policy(named).evaluate("github", gh(event_name=event), ["db-ro"]).allowed


def test_fork_pull_request_is_refused_unless_named() -> None:
    fork = gh(event_name="pull_request", head_repository="mallory/api", head_repository_id="666")
    decision = policy(ANY_EVENT).evaluate("github", fork, ["db-ro"])
    assert not decision.allowed
    assert "'fork'" in decision.reason_detail
    same_repo = gh(
        event_name="pull_request", head_repository="acme/api", head_repository_id="123456"
    )
    assert policy(ANY_EVENT).evaluate("github", same_repo, ["db-ro"]).allowed
    named = ANY_EVENT.replace("grants: [db-ro]", "grants: [db-ro]\n  allow_events: [fork]")
    assert policy(named).evaluate("github", fork, ["db-ro"]).allowed


GITLAB_RULE = """
- id: gl
  issuer: gitlab
  claims: {project_id: "20", ref_protected: true, ci_config_ref_uri: "gitlab.com/acme/api//.gitlab-ci.yml@refs/heads/main"}
  grants: [db-ro]
"""


def test_gitlab_rule_with_pinned_pipeline_definition() -> None:
    compiled = policy(GITLAB_RULE)
    uri = "gitlab.com/acme/api//.gitlab-ci.yml@refs/heads/main"
    assert compiled.evaluate("gitlab", gl(ci_config_ref_uri=uri), ["db-ro"]).allowed
    other = "gitlab.com/mallory/ci//evil.yml@refs/heads/main"
    assert not compiled.evaluate("gitlab", gl(ci_config_ref_uri=other), ["db-ro"]).allowed
    assert not compiled.evaluate(
        "gitlab", gl(ci_config_ref_uri=uri, ref_protected="false"), ["db-ro"]
    ).allowed


def test_gitlab_merge_request_pipelines_are_refused_unless_named() -> None:
    uri = "gitlab.com/acme/api//.gitlab-ci.yml@refs/heads/main"
    mr = gl(ci_config_ref_uri=uri, pipeline_source="merge_request_event")
    assert not policy(GITLAB_RULE).evaluate("gitlab", mr, ["db-ro"]).allowed
    named = GITLAB_RULE.replace(
        "grants: [db-ro]", "grants: [db-ro]\n  allow_events: [merge_request_event]"
    )
    assert policy(named).evaluate("gitlab", mr, ["db-ro"]).allowed


def test_github_rules_do_not_apply_to_gitlab_tokens() -> None:
    assert not policy(MAIN).evaluate("gitlab", gl(), ["db-rw"]).allowed


# -- compile-time refusals --------------------------------------------------------------------


def test_sub_only_rule_is_refused_at_load() -> None:
    message = problems("""
- id: by-sub
  issuer: github
  claims: {sub: "repo:acme/api:ref:refs/heads/main"}
  grants: [db-rw]
  unsafe: true
""")
    assert "rules[0].claims.sub" in message
    assert "immutable ids" in message


@pytest.mark.parametrize("claim", ["aud", "iss", "exp", "jti"])
def test_token_claims_cannot_be_conditions(claim: str) -> None:
    assert f"rules[0].claims.{claim}" in problems(f"""
- id: r
  issuer: github
  claims: {{repository_id: "1", {claim}: x}}
  grants: [db-rw]
""")


def test_rule_without_immutable_id_is_refused() -> None:
    message = problems("""
- id: by-name
  issuer: github
  claims: {repository: acme/api, ref: refs/heads/main}
  grants: [db-rw]
""")
    assert "binds no immutable id" in message
    assert "repository_id or repository_owner_id" in message


def test_gitlab_rule_without_project_or_namespace_id_is_refused() -> None:
    assert "project_id or namespace_id" in problems("""
- id: gl
  issuer: gitlab
  claims: {project_path: acme/api}
  grants: [db-rw]
""")


def test_unsafe_rule_is_accepted_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="airlock.policy"):
        compiled = policy("""
- id: by-name
  issuer: github
  claims: {repository: acme/api}
  grants: [db-ro]
  unsafe: true
""")
    assert compiled.evaluate("github", gh(), ["db-ro"]).allowed
    assert "by-name" in caplog.text
    assert "unsafe" in caplog.text


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ('{repository_id: "12*"}', "immutable ids must be exact"),
        ('{repository_id: "1", ref: "refs/**"}', "`**` is not supported"),
        ('{repository_id: "1", ref_protected: "yes"}', "'true' or 'false'"),
        ('{repository_id: "1", ref: "' + "*a" * 9 + '"}', "at most 8"),
        ("{}", "needs claim conditions"),
    ],
)
def test_ambiguous_patterns_are_refused(condition: str, expected: str) -> None:
    assert expected in problems(f"""
- id: r
  issuer: github
  claims: {condition}
  grants: [db-rw]
  unsafe: true
""")


def test_sensitive_event_in_claims_must_be_confirmed_in_allow_events() -> None:
    message = problems("""
- id: prt
  issuer: github
  claims: {repository_id: "1", event_name: [pull_request_target]}
  grants: [db-rw]
""")
    assert "rules[0].claims.event_name" in message
    assert "allow_events" in message


def test_unknown_names_and_duplicates_are_all_reported_with_paths_and_lines() -> None:
    message = problems("""
- id: a
  issuer: github
  claims: {repository_id: "1"}
  grants: [db-rw, nope]
- id: a
  issuer: bitbucket
  claims: {repository_id: "1"}
  grants: []
""")
    assert "rules[0].grants[1]" in message
    assert "unknown grant 'nope'" in message
    assert "rules[1].id" in message
    assert "used twice" in message
    assert "rules[1].issuer" in message
    assert "rules[1].grants" in message
    assert "(line " in message
    assert message.count("\n  - ") == 4


def test_issuer_configs_feed_the_verifier() -> None:
    configs = policy(MAIN).issuer_configs()
    assert [c.name for c in configs] == ["github", "gitlab"]
    assert configs[0].audience == AUD


# -- the fast path and the explained path agree ----------------------------------------------

MIXED = (
    MAIN
    + GLOBS
    + ANY_EVENT
    + """
- id: freeze-deploy
  issuer: github
  effect: deny
  claims: {environment: [frozen, "legacy-*"]}
  grants: [deploy]
- id: prt
  issuer: github
  claims: {repository_id: "123456", event_name: pull_request_target}
  allow_events: [pull_request_target]
  grants: [db-ro, db-rw]
- id: org-wide
  issuer: github
  claims: {repository_owner_id: ["7890", "7891"], ref: "refs/tags/*"}
  grants: [db-ro, gh-write]
- id: other-repo
  issuer: github
  claims: {repository_id: "999", ref: "refs/heads/*"}
  grants: [deploy, db-ro, db-rw, gh-write]
"""
)


@settings(max_examples=200, deadline=None)
@given(
    repository_id=st.sampled_from(["123456", "999", 123456]),
    ref=st.sampled_from(["refs/heads/main", "refs/heads/dev", "refs/tags/v1", "refs/tags/v1/x"]),
    event=st.sampled_from(["push", "workflow_dispatch", "pull_request_target", "workflow_run"]),
    environment=st.sampled_from([None, "frozen", "legacy-1", "prod"]),
    requested=st.lists(
        st.sampled_from(["db-rw", "db-ro", "gh-write", "deploy", "nope"]), max_size=4
    ),
)
def test_evaluate_equals_the_explained_decision(
    repository_id: Any, ref: str, event: str, environment: str | None, requested: list[str]
) -> None:
    compiled = MIXED_POLICY
    claims = gh(repository_id=repository_id, ref=ref, event_name=event)
    if environment is not None:
        claims["environment"] = environment
    claims["job_workflow_ref"] = "acme/workflows/.github/workflows/deploy.yml@refs/heads/main"
    decision = compiled.evaluate("github", claims, requested)
    assert decision == compiled.explain("github", claims, requested).decision
    assert set(decision.grants) <= set(requested)
    if decision.allowed:
        assert decision.grants


MIXED_POLICY = policy(MIXED)


def test_immutable_sub_tokens_bind_by_the_id_claims_and_sub_stays_refused() -> None:
    """Repositories created since mid-2026 get an immutable ``sub``
    (``repo:octo@7890/api@123456:ref:…``): the policy still binds the id claims, and a rule
    on ``sub`` (either format) is refused at load."""
    immutable = "repo:acme@7890/api@123456:ref:refs/heads/main"
    assert policy(MAIN).evaluate("github", gh(sub=immutable), ["db-rw"]).allowed
    renamed = gh(sub="repo:acme@7890/api@999999:ref:refs/heads/main", repository_id="999999")
    assert not policy(MAIN).evaluate("github", renamed, ["db-rw"]).allowed
    rule = MAIN.replace("ref: refs/heads/main,", f'ref: refs/heads/main, sub: "{immutable}",')
    assert "`sub` cannot be a condition" in problems(rule)


def test_repo_property_claims_are_exact_conditions_next_to_the_ids() -> None:
    rule = MAIN.replace("ref: refs/heads/main,", "ref: refs/heads/main, repo_property_tier: prod,")
    trust = policy(rule)
    assert trust.evaluate("github", gh(repo_property_tier="prod"), ["db-rw"]).allowed
    denied = trust.evaluate("github", gh(repo_property_tier="dev"), ["db-rw"])
    assert not denied.allowed and "repo_property_tier" in denied.reason_detail
    assert not trust.evaluate("github", gh(), ["db-rw"]).allowed  # absent: no match
    unbound = """
    - id: by-property-only
      issuer: github
      claims: {repo_property_tier: prod}
      grants: [db-rw]
    """
    assert "immutable" in problems(unbound)  # a property is no substitute for the ids
