"""The guard's cheap shape key (a statement's text with its integer literals out) never joins
two statements that PostgreSQL reads differently: whenever two texts get the same key, their
query fingerprints (which ignore only constants) are the same, and so are their verdicts."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pglast import parser as pg_parser
from tests.gateway.postgres.test_evasion_catalogue import CATALOGUE, RULES

from airlock.gateway.postgres.guard import SqlGuard, _key
from airlock.policy.guardrails import GuardrailDefaults, GuardrailRule

# Pieces that put the lexer in every state the key must tell apart: identifiers with digits,
# numbers of every form, operators, punctuation, strings, comments, parameters, casts.
PIECES = [
    "SELECT", "DELETE FROM", "DROP TABLE", "UPDATE", "SET", "WHERE", "FROM", "AND", " ", "\t",
    "\n", "t1", "a_2", "x$3", "é4", "1", "23", "0", "1.5", ".5", "1e5", "1e+5", "0x1F", "1_000",
    "=", "<", ">=", "-", "+", "*", "/", "%", "^", "|", "&", "!", "~", "@", "#", "(", ")", ",",
    ";", ".", "[", "]", ":", "::", "'7'", '"c8"', "$1", "$$9$$", "-- 5\n", "/* 6 */", "e",
    "E'\\\\9'", "?",
]  # fmt: skip


def _twin(sql: str, data: st.DataObject) -> str:
    """``sql`` with every run of digits replaced by another (any run: the key's job is to
    tell apart the ones that are not integer literals)."""
    return re.sub(r"[0-9]+", lambda m: str(data.draw(st.integers(0, 10**6), label=m.group())), sql)


def _fingerprint(sql: str) -> str | None:
    try:
        return str(pg_parser.fingerprint(sql))
    except Exception:
        return None


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=14), st.data())
def test_texts_with_one_key_have_one_fingerprint(pieces: list[str], data: st.DataObject) -> None:
    sql = "".join(pieces)
    twin = _twin(sql, data)
    key = _key(sql)
    if key is None or key != _key(twin):
        return
    assert _fingerprint(sql) == _fingerprint(twin) or _fingerprint(sql) is None


def test_the_key_takes_out_integer_literals_only() -> None:
    assert (
        _key("SELECT abalance FROM a WHERE aid = 12345;") == "SELECT abalance FROM a WHERE aid = ';"
    )
    assert _key("SELECT t1.c2 FROM t1 WHERE x=5 AND y = 1.5 AND z = 1e5") == (
        "SELECT t1.c2 FROM t1 WHERE x=' AND y = 1.5 AND z = 1e5"
    )
    for unsafe in ["SELECT '1'", 'SELECT "c1"', "SELECT $1", "SELECT 1 -- 2", "SELECT é1"]:
        assert _key(unsafe) is None


@pytest.mark.parametrize(
    ("sql", "action", "rule_id"), CATALOGUE, ids=[c[0][:50] for c in CATALOGUE]
)
def test_a_warm_cache_gives_the_catalogue_verdicts(sql: str, action: str, rule_id: str) -> None:
    """Every catalogue statement judged after all the others (and a twin of it with other
    integers) were: the caches answer as the parser does."""
    guard = SqlGuard([GuardrailRule.model_validate(r) for r in RULES], GuardrailDefaults(), "a")
    for other, _, _ in CATALOGUE:
        guard.verdict(other)
        guard.verdict(re.sub(r"\b[0-9]+\b", "7", other))
    final = guard.verdict(sql).final
    assert (final.action, final.rule_id) == (action, rule_id)
