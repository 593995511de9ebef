"""SQL text → :class:`~airlock.policy.guardrails.SqlStatement` summaries, with PostgreSQL's own
parser (pglast, libpg_query), and the per-gateway judge built on them. Sans-I/O.

What is read from each statement: its kinds (the top statement *and* every nested statement, so
a ``WITH d AS (DELETE …) SELECT …`` is ``select`` and ``delete``, an ``EXPLAIN ANALYZE UPDATE``
is ``update``), every table it names, every function it calls, whether a DELETE/UPDATE has a
WHERE that restricts anything. What cannot be read: the bodies of ``DO`` blocks and of functions
and procedures called (kinds ``do``/``call``; a ``SELECT f()`` may write anything ``f`` does) —
rules should treat those as risky.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pglast
from pglast import ast
from pglast import parser as pg_parser
from pglast.enums import GrantTargetType, ObjectType
from pglast.parser import ParseError

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

_NESTED_KINDS: dict[type[Any], str] = {
    ast.SelectStmt: "select",
    ast.InsertStmt: "insert",
    ast.UpdateStmt: "update",
    ast.DeleteStmt: "delete",
    ast.MergeStmt: "merge",
}
_EXACT_KINDS: dict[type[Any], str] = {
    ast.TruncateStmt: "truncate",
    ast.DoStmt: "do",
    ast.CallStmt: "call",
    ast.VariableSetStmt: "set",
    ast.VacuumStmt: "vacuum",
    ast.CopyStmt: "copy",
    ast.RenameStmt: "alter",
    ast.IndexStmt: "create",
    ast.ViewStmt: "create",
    ast.DefineStmt: "create",
    ast.RuleStmt: "create",
    ast.CompositeTypeStmt: "create",
    ast.ReindexStmt: "alter",
    ast.ClusterStmt: "alter",
    ast.CommentStmt: "alter",
    ast.SecLabelStmt: "alter",
    ast.ReassignOwnedStmt: "alter",
    ast.DropOwnedStmt: "drop",
    ast.DropRoleStmt: "drop",
    ast.DropdbStmt: "drop",
    ast.DropTableSpaceStmt: "drop",
    ast.DropSubscriptionStmt: "drop",
    ast.DropUserMappingStmt: "drop",
    ast.DropStmt: "drop",
}
# Objects whose DROP names relations (schema.name lists) rather than types, functions, roles.
_RELATION_OBJECTS = {
    ObjectType.OBJECT_TABLE,
    ObjectType.OBJECT_VIEW,
    ObjectType.OBJECT_MATVIEW,
    ObjectType.OBJECT_SEQUENCE,
    ObjectType.OBJECT_INDEX,
    ObjectType.OBJECT_FOREIGN_TABLE,
}
_WHOLE_DATABASE = "*.*"


def analyse_sql(sql: str) -> list[SqlStatement]:
    """One summary per statement of ``sql``; one unparsed summary if it does not parse.

    An empty string (or only comments) gives no statement at all.
    """
    try:
        raw = pglast.parse_sql(sql)
    except ParseError:
        return [SqlStatement(text=sql, kinds=frozenset({"other"}), parsed=False)]
    return [_summarise(stmt.stmt, _slice(sql, stmt)) for stmt in raw]


def _slice(sql: str, raw: Any) -> str:
    # pglast turns libpg_query's byte offsets into character offsets; 0 length: to the end.
    start = raw.stmt_location or 0
    end = start + raw.stmt_len if raw.stmt_len else len(sql)
    return sql[start:end].strip()


@dataclass
class _Facts:
    kinds: set[str]
    tables: list[str]
    functions: list[str]
    without_where: bool = False


def _summarise(node: Any, text: str) -> SqlStatement:
    facts = _Facts({_top_kind(node)}, [], [])
    for child in _walk(node):
        _collect(child, facts)
    if len(facts.kinds) > 1:
        facts.kinds.discard("other")
    return SqlStatement(
        text=text,
        kinds=frozenset(facts.kinds),
        tables=tuple(dict.fromkeys(facts.tables)),
        functions=tuple(dict.fromkeys(facts.functions)),
        without_where=facts.without_where,
    )


def _top_kind(node: Any) -> str:
    kind = _EXACT_KINDS.get(type(node)) or _NESTED_KINDS.get(type(node))
    if kind is not None:
        return kind
    name = type(node).__name__
    if isinstance(node, ast.GrantStmt | ast.GrantRoleStmt):
        return "grant" if node.is_grant else "revoke"
    if name.startswith("Alter"):
        return "alter"
    if name.startswith("Create"):
        return "create"
    return "other"


def _walk(node: Any) -> Iterator[Any]:
    """Every AST node under (and including) ``node``, depth first."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, ast.Node):
            yield item
            stack.extend(getattr(item, slot) for slot in type(item).__slots__)  # type: ignore[attr-defined]
        elif isinstance(item, list | tuple):
            stack.extend(item)


def _collect(node: Any, facts: _Facts) -> None:
    kind = _NESTED_KINDS.get(type(node))
    if kind is not None and not (isinstance(node, ast.SelectStmt) and node.valuesLists):
        facts.kinds.add(kind)  # a bare VALUES list (INSERT ... VALUES) reads nothing
    if isinstance(node, ast.SelectStmt) and node.intoClause is not None:
        facts.kinds.add("create")
    if isinstance(node, ast.DeleteStmt | ast.UpdateStmt) and not _restricts(node.whereClause):
        facts.without_where = True
    if isinstance(node, ast.RangeVar):
        facts.tables.append(_qualified(node.schemaname, node.relname or ""))
    elif isinstance(node, ast.FuncCall):
        _function(node, facts)
    elif isinstance(node, ast.CopyStmt):
        _copy(node, facts)
    elif isinstance(node, ast.DropStmt):
        facts.tables.extend(_dropped(node))
    elif isinstance(node, ast.GrantStmt):
        facts.tables.extend(_granted(node))
    elif isinstance(node, ast.DropdbStmt | ast.DropOwnedStmt):
        facts.tables.append(_WHOLE_DATABASE)


def _restricts(where: Any) -> bool:
    """A WHERE restricts rows when it mentions a column (or is WHERE CURRENT OF a cursor)."""
    if where is None:
        return False
    return any(isinstance(n, ast.ColumnRef | ast.CurrentOfExpr) for n in _walk(where))


def _qualified(schema: str | None, name: str) -> str:
    return f"{schema}.{name}" if schema else name


def _names(items: Any) -> list[str]:
    return [item.sval or "" for item in items if isinstance(item, ast.String)]


def _function(node: Any, facts: _Facts) -> None:
    name = ".".join(_names(node.funcname)).lower()
    facts.functions.append(name)
    if name.rpartition(".")[2] == "set_config":  # SELECT set_config('search_path', …) is a SET
        facts.kinds.add("set")


def _copy(node: Any, facts: _Facts) -> None:
    if node.is_program:
        facts.kinds.add("copy_program")
    elif node.filename is not None:
        facts.kinds.add("copy_file")


def _dropped(node: Any) -> list[str]:
    kind = node.removeType
    if kind == ObjectType.OBJECT_SCHEMA:
        return [f"{name}.*" for name in _names(node.objects)]
    if kind not in _RELATION_OBJECTS:
        return []
    out = []
    for obj in node.objects:
        parts = _names(obj) if isinstance(obj, list | tuple) else _names([obj])
        if parts:
            out.append(".".join(parts[-2:]))
    return out


def _granted(node: Any) -> list[str]:
    if node.targtype == GrantTargetType.ACL_TARGET_ALL_IN_SCHEMA:
        return [f"{name}.*" for name in _names(node.objects or ())]
    return []


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

    @classmethod
    def of(cls, judgement: Judgement) -> Verdict:
        """The verdict of ``judgement``."""
        statement_kinds = tuple(tuple(sorted(s.kinds)) for s in judgement.statements)
        notable = tuple(
            (decision, statement_kinds[i])
            for i, decision in enumerate(judgement.decisions)
            if decision.action != "allow" or not decision.rule_id.startswith("airlock.default.")
        )
        return cls(tuple(judgement.kinds), judgement.final, notable, statement_kinds)


class SqlGuard:
    """The guardrails of one PostgreSQL gateway: ``judge(sql)`` → :class:`Judgement`.

    Results are cached by text (prepared statements and repeated queries are parsed once), and
    by shape: PostgreSQL's query fingerprint (pg_query's, ~3 µs) ignores literal values, which
    no decision depends on unless a rule matches on ``text:``. So `WHERE id = 1` and
    `WHERE id = 2` are parsed once (~60 µs) between them.
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
        if len(self._by_shape) >= self._MAX_SHAPES:
            self._by_shape.clear()
        self._by_shape[shape] = judgement
        return judgement

    def verdict(self, sql: str) -> Verdict:
        """The :class:`Verdict` on ``sql``: :meth:`judge`'s, but a shape seen before costs only
        its fingerprint (nothing is rebuilt, so this is the relay's per-statement path)."""
        if not self._shape_safe:
            return Verdict.of(self._by_text(sql))
        try:
            shape = pg_parser.fingerprint(sql)
        except Exception:  # unparsable: the full path decides (and records why)
            return Verdict.of(self._by_text(sql))
        verdict = self._verdicts.get(shape)
        if verdict is None:
            verdict = Verdict.of(self._by_text(sql))
            if len(self._verdicts) >= self._MAX_SHAPES:
                self._verdicts.clear()
            self._verdicts[shape] = verdict
        return verdict

    def _judge(self, sql: str) -> Judgement:
        statements = tuple(analyse_sql(sql))
        decisions = tuple(decide_sql(statements, self.rules, self.defaults))
        # No statement at all (empty query): nothing runs, so nothing to refuse.
        final = strictest(decisions) or Decision("allow", DEFAULT_RULE_IDS["sql_unmatched"])
        return Judgement(statements, decisions, final)
