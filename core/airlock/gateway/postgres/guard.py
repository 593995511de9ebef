"""The per-gateway SQL judge: statement summaries (:mod:`~airlock.gateway.postgres.analysis`)
against the policy's guardrails, cached for the relay's hot path. Sans-I/O."""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pglast import parser as pg_parser

from airlock.gateway.postgres.analysis import analyse_sql
from airlock.policy.guardrails import (
    DEFAULT_RULE_IDS,
    Decision,
    GuardrailDefaults,
    GuardrailRule,
    SqlStatement,
    decide_sql,
    rules_for_gateway,
    strictest,
)

__all__ = ["Judgement", "SqlGuard", "Verdict", "analyse_sql"]


@dataclass(frozen=True)
class Judgement:
    """The statements of one SQL string, a decision for each, and the strictest of them."""

    statements: tuple[SqlStatement, ...]
    decisions: tuple[Decision, ...]
    final: Decision

    @property
    def kinds(self) -> list[str]:
        """Every statement kind in the string, sorted, for events."""
        return sorted({k for s in self.statements for k in s.kinds})


@dataclass(frozen=True)
class Verdict:
    """What a relay needs from a :class:`Judgement`, without the statement texts.

    ``notable`` holds the decisions worth an event (every one but a default allow), each with
    the sorted kinds of its statement; ``statement_kinds`` the sorted kinds of every statement.
    """

    kinds: tuple[str, ...]
    final: Decision
    notable: tuple[tuple[Decision, tuple[str, ...]], ...]
    statement_kinds: tuple[tuple[str, ...], ...]
    prepares: tuple[tuple[str, SqlStatement], ...] = ()
    executes: bool = False

    @classmethod
    def of(cls, judgement: Judgement) -> Verdict:
        """The verdict of ``judgement``."""
        statement_kinds = tuple(tuple(sorted(s.kinds)) for s in judgement.statements)
        notable = tuple(
            (decision, statement_kinds[i])
            for i, decision in enumerate(judgement.decisions)
            if decision.action != "allow" or not decision.rule_id.startswith("airlock.default.")
        )
        prepares = tuple((s.prepares, s) for s in judgement.statements if s.prepares is not None)
        executes = any(s.executes is not None for s in judgement.statements)
        return cls(
            tuple(judgement.kinds), judgement.final, notable, statement_kinds, prepares, executes
        )


class SqlGuard:
    """The guardrails of one PostgreSQL gateway: ``judge(sql)`` → :class:`Judgement`.

    Results are cached by text (prepared statements and repeated queries are parsed once), and
    by shape: PostgreSQL's query fingerprint (pg_query's, ~3 µs) ignores literal values, which
    no decision depends on unless a rule matches on ``text:``. So `WHERE id = 1` and
    `WHERE id = 2` are parsed once (~60 µs) between them. Statements whose judgement *does*
    depend on literals are never cached by shape: settings (``SET x = 'off'``,
    ``set_config('…')``, ``ALTER ROLE … SET x = 0``), bodies (``DO $$…$$``, ``CREATE
    FUNCTION … AS '…'``) and writes (a ``WHERE 1 = 1`` is a tautology, ``WHERE 1 = 2`` is not).
    """

    _MAX_SHAPES = 4096

    def __init__(
        self, rules: Sequence[GuardrailRule], defaults: GuardrailDefaults, gateway: str
    ) -> None:
        self.rules = rules_for_gateway(rules, gateway, "postgres")
        self.defaults = defaults
        self.gateway = gateway
        self._by_text = functools.lru_cache(maxsize=2048)(self._judge)
        self._by_shape: dict[str, Judgement] = {}
        self._verdicts: dict[str, Verdict] = {}
        self._by_key: dict[str, Verdict] = {}  # text with its integer literals out (_key)
        self._shape_safe = not any(r.sql is not None and r.sql.text for r in self.rules)

    def judge(self, sql: str) -> Judgement:
        """The decision on ``sql``; cached by text, and by shape when literals cannot matter."""
        if not self._shape_safe:
            return self._by_text(sql)
        try:
            shape = pg_parser.fingerprint(sql)
        except Exception:  # unparsable: the full path decides (and records why)
            return self._by_text(sql)
        hit = self._by_shape.get(shape)
        if hit is not None and len(hit.statements) == 1:
            only = dataclasses.replace(hit.statements[0], text=sql)
            return dataclasses.replace(hit, statements=(only,))
        judgement = self._by_text(sql)
        if _literals_matter(judgement):
            return judgement
        if len(self._by_shape) >= self._MAX_SHAPES:
            self._by_shape.clear()
        self._by_shape[shape] = judgement
        return judgement

    def verdict(self, sql: str, prepared: Mapping[str, SqlStatement] | None = None) -> Verdict:
        """The :class:`Verdict` on ``sql``: :meth:`judge`'s, but a shape seen before costs only
        its fingerprint (nothing is rebuilt, so this is the relay's per-statement path).

        ``prepared`` are the statements the connection's SQL ``PREPARE`` made, by name: an
        ``EXECUTE`` is judged as the statement it runs (an unknown name cannot be judged and
        gets the ``sql_unparsable`` default)."""
        verdict = self._cached_verdict(sql)
        if verdict.executes:
            return Verdict.of(self._expand(self._by_text(sql), prepared or {}))
        return verdict

    def _expand(self, judgement: Judgement, prepared: Mapping[str, SqlStatement]) -> Judgement:
        statements = tuple(_executed(s, prepared) for s in judgement.statements)
        decisions = tuple(decide_sql(statements, self.rules, self.defaults))
        final = strictest(decisions) or judgement.final
        return Judgement(statements, decisions, final)

    def _cached_verdict(self, sql: str) -> Verdict:
        if not self._shape_safe:
            return Verdict.of(self._by_text(sql))
        key = _key(sql)
        if key is not None:
            known = self._by_key.get(key)
            if known is not None:
                return known
        try:
            shape = pg_parser.fingerprint(sql)
        except Exception:  # unparsable: the full path decides (and records why)
            return Verdict.of(self._by_text(sql))
        verdict = self._verdicts.get(shape)
        if verdict is None:
            judgement = self._by_text(sql)
            verdict = Verdict.of(judgement)
            if _literals_matter(judgement):
                return verdict
            if len(self._verdicts) >= self._MAX_SHAPES:
                self._verdicts.clear()
            self._verdicts[shape] = verdict
        if key is not None:  # a shape that may be cached: so may this finer key of it
            if len(self._by_key) >= self._MAX_SHAPES:
                self._by_key.clear()
            self._by_key[key] = verdict
        return verdict

    def _judge(self, sql: str) -> Judgement:
        statements = tuple(analyse_sql(sql))
        decisions = tuple(decide_sql(statements, self.rules, self.defaults))
        # No statement at all (empty query): nothing runs, so nothing to refuse.
        final = strictest(decisions) or Decision("allow", DEFAULT_RULE_IDS["sql_unmatched"])
        return Judgement(statements, decisions, final)


# The cheap key of a statement's shape (no parse, no fingerprint): the text with each integer
# literal replaced by a quote. Only for texts with no quote, dollar, backslash, comment or
# non-ASCII character: the lexer is then never inside a string, identifier or comment, so a
# run of digits that starts after whitespace or an operator or punctuation character (never
# after an identifier's letter, digit, _ or $) and ends before one of those (never before a
# letter, _ or ., which would make it part of another token) is one integer token. Two texts
# with the same key differ only in the values of such tokens: the fingerprint (which ignores
# every constant) is the same, and so is the verdict. A key contains a quote only where
# digits were, so it never equals a text that is its own key.
_KEY_UNSAFE = re.compile(r"['\"$\\]|--|/\*|[^\x00-\x7f]")
_INTEGER = re.compile(
    r"(?<=[ \t\n\r\f\v=(,<>+*/%^|&!~@#\-\[])[0-9]+(?=[ \t\n\r\f\v;),<>=+*/%^|&!~@#\-\]]|\Z)"
)


def _key(sql: str) -> str | None:
    """``sql`` with its integer literals out, or None when it cannot be keyed safely."""
    if _KEY_UNSAFE.search(sql) is not None:
        return None
    return _INTEGER.sub("'", sql)


# Kinds whose judgement can turn on a literal value, which a query fingerprint ignores. "alter":
# ALTER ROLE/DATABASE/SYSTEM/FUNCTION ... SET changes parsing for some values only
# (standard_conforming_strings = 0 but not = 1), so a cached twin must not answer for it.
_LITERAL_KINDS = frozenset({"set", "do", "create", "call", "delete", "update", "merge", "alter"})


def _literals_matter(judgement: Judgement) -> bool:
    return any(
        s.changes_parsing or not s.kinds.isdisjoint(_LITERAL_KINDS) for s in judgement.statements
    )


def _executed(stmt: SqlStatement, prepared: Mapping[str, SqlStatement]) -> SqlStatement:
    """``stmt`` with what its ``EXECUTE`` runs counted in (unparsed if that is unknown)."""
    if stmt.executes is None:
        return stmt
    target = prepared.get(stmt.executes)
    if target is None:
        return dataclasses.replace(stmt, parsed=False)
    kinds = (stmt.kinds | target.kinds) - ({"other"} if target.kinds - {"other"} else set())
    return dataclasses.replace(
        stmt,
        kinds=frozenset(kinds),
        tables=tuple(dict.fromkeys(stmt.tables + target.tables)),
        functions=tuple(dict.fromkeys(stmt.functions + target.functions)),
        without_where=stmt.without_where or target.without_where,
        changes_parsing=stmt.changes_parsing or target.changes_parsing,
        parsed=stmt.parsed and target.parsed,
    )
