"""Session 6 attacks on the PostgreSQL guard's caches (the cheap integer key, commit 6032aa3, in
front of the query fingerprint): the agent first sends a harmless twin of a statement (same key
or same fingerprint, a different constant), so that the twin's verdict is cached, then the
statement the guardrails deny. Every verdict a warm cache gives must be the one the parser gives
to a cold guard.

Found: ``ALTER ROLE/DATABASE/SYSTEM/FUNCTION … SET`` of a setting that changes how the server
reads SQL (``standard_conforming_strings = 0``, ``client_encoding = 'BIG5'``) is denied by the
built-in parse_state rule only for the values that change parsing, and those statements
(kind ``alter``) were cached by shape: ``… = 1`` allowed, then ``… = 0`` got the cached allow.
"""

from __future__ import annotations

import pytest
from tests.gateway.postgres.test_evasion_catalogue import PARSE, RULES

from airlock.gateway.postgres.guard import SqlGuard, _key
from airlock.policy.guardrails import GuardrailDefaults, GuardrailRule

# (the harmless twin sent first, the statement the parse_state rule denies)
TWINS = [
    # the same cheap key: only the integer differs
    (
        "ALTER ROLE CURRENT_USER SET standard_conforming_strings = 1",
        "ALTER ROLE CURRENT_USER SET standard_conforming_strings = 0",
    ),
    (
        "ALTER DATABASE app SET standard_conforming_strings = 1",
        "ALTER DATABASE app SET standard_conforming_strings = 0",
    ),
    ("ALTER SYSTEM SET backslash_quote = 0", "ALTER SYSTEM SET backslash_quote = 1"),
    (
        "ALTER FUNCTION f() SET standard_conforming_strings = 1",
        "ALTER FUNCTION f() SET standard_conforming_strings = 0",
    ),
    # the same fingerprint: another constant
    (
        "ALTER ROLE CURRENT_USER SET standard_conforming_strings = on",
        "ALTER ROLE CURRENT_USER SET standard_conforming_strings = off",
    ),
    (
        "ALTER DATABASE app SET client_encoding = 'UTF8'",
        "ALTER DATABASE app SET client_encoding = 'BIG5'",
    ),
    (
        "ALTER ROLE r IN DATABASE d SET client_encoding = 'UTF8'",
        "ALTER ROLE r IN DATABASE d SET client_encoding = 'SJIS'",
    ),
]


def _guard() -> SqlGuard:
    return SqlGuard([GuardrailRule.model_validate(r) for r in RULES], GuardrailDefaults(), "appdb")


@pytest.mark.parametrize(("twin", "sql"), TWINS, ids=[t[1][:60] for t in TWINS])
def test_a_cached_twin_never_lets_a_parse_state_change_through(twin: str, sql: str) -> None:
    cold = _guard().verdict(sql).final
    assert (cold.action, cold.rule_id) == ("deny", PARSE)
    warm = _guard()
    assert warm.verdict(twin).final.action == "allow"  # the twin itself is harmless
    final = warm.verdict(sql).final
    assert (final.action, final.rule_id) == ("deny", PARSE)


def test_the_integer_twins_share_the_cheap_key() -> None:
    # so the first four pairs go through the key cache, the rest through the fingerprint
    for twin, sql in TWINS[:4]:
        assert _key(twin) == _key(sql) is not None
