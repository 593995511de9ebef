"""SQL text → :class:`~airlock.policy.guardrails.SqlStatement` summaries, with PostgreSQL's own
parser (pglast, libpg_query). Sans-I/O.

What is read from each statement: its kinds (the top statement *and* every nested statement, so
a ``WITH d AS (DELETE …) SELECT …`` is ``select`` and ``delete``, an ``EXPLAIN ANALYZE UPDATE``
is ``update``, a ``MERGE … WHEN MATCHED THEN DELETE`` is ``merge`` and ``delete``), every table
it names, every function it calls, whether a DELETE/UPDATE/MERGE has a condition that restricts
anything. The bodies of ``DO`` blocks and of ``CREATE FUNCTION/PROCEDURE`` in SQL or PL/pgSQL are
parsed too and their statements count for the statement that carries them; PL/pgSQL that runs
text built at run time (``EXECUTE``, ``FOR … IN EXECUTE``, ``OPEN … FOR EXECUTE``) adds the kind
``dynamic_sql``. What cannot be read: bodies in other languages and the functions a statement
calls (a ``SELECT f()`` may write anything ``f`` does).

Statements that change how PostgreSQL reads later SQL (``standard_conforming_strings``,
``backslash_quote``, a client encoding whose multibyte characters can end in ``\\`` or ``'``)
are flagged ``changes_parsing`` (see :mod:`airlock.gateway.postgres.parse_state`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pglast
from pglast import ast
from pglast.enums import CmdType, GrantTargetType, ObjectType
from pglast.parser import ParseError

from airlock.gateway.postgres.parse_state import PARSING_SETTINGS, setting_changes_parsing
from airlock.gateway.postgres.plpgsql import plpgsql_statements
from airlock.gateway.postgres.tautology import is_tautology
from airlock.policy.guardrails import SqlStatement

__all__ = ["analyse_sql"]

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
_MERGE_ACTIONS = {
    CmdType.CMD_UPDATE: "update",
    CmdType.CMD_DELETE: "delete",
    CmdType.CMD_INSERT: "insert",
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
# Views whose UPDATE changes settings (pg_settings has a rule that calls set_config).
_SETTING_VIEWS = {"pg_settings", "pg_catalog.pg_settings"}
_MAX_BODY_DEPTH = 4  # a DO inside a function body inside a DO ...: deeper is refused


def analyse_sql(sql: str) -> list[SqlStatement]:
    """One summary per statement of ``sql``; one unparsed summary if it does not parse.

    An empty string (or only comments) gives no statement at all.
    """
    return _analyse(sql, 0)


def _analyse(sql: str, depth: int) -> list[SqlStatement]:
    try:
        raw = pglast.parse_sql(sql)
    except ParseError:
        return [SqlStatement(text=sql, kinds=frozenset({"other"}), parsed=False)]
    return [_summarise(stmt.stmt, _slice(sql, stmt), depth) for stmt in raw]


def _slice(sql: str, raw: Any) -> str:
    # pglast turns libpg_query's byte offsets into character offsets; 0 length: to the end.
    start = raw.stmt_location or 0
    end = start + raw.stmt_len if raw.stmt_len else len(sql)
    return sql[start:end].strip()


@dataclass
class _Facts:
    kinds: set[str]
    tables: list[str] = field(default_factory=list)
    functions: list[str] = field(default_factory=list)
    without_where: bool = False
    changes_parsing: bool = False
    parsed: bool = True
    prepares: str | None = None
    executes: str | None = None

    def absorb(self, stmt: SqlStatement) -> None:
        """Count ``stmt`` (from a body this statement carries) as part of this one."""
        self.kinds |= stmt.kinds
        self.tables += stmt.tables
        self.functions += stmt.functions
        self.without_where |= stmt.without_where
        self.changes_parsing |= stmt.changes_parsing
        self.parsed &= stmt.parsed


def _summarise(node: Any, text: str, depth: int) -> SqlStatement:
    facts = _Facts({_top_kind(node)})
    if isinstance(node, ast.PrepareStmt):
        facts.prepares = node.name
    elif isinstance(node, ast.ExecuteStmt):
        facts.executes = node.name
    for child in _walk(node):
        _collect(child, facts)
    if isinstance(node, ast.DoStmt | ast.CreateFunctionStmt):
        _body(node, text, facts, depth)
    if len(facts.kinds) > 1:
        facts.kinds.discard("other")
    return SqlStatement(
        text=text,
        kinds=frozenset(facts.kinds),
        tables=tuple(dict.fromkeys(facts.tables)),
        functions=tuple(dict.fromkeys(facts.functions)),
        without_where=facts.without_where,
        parsed=facts.parsed,
        changes_parsing=facts.changes_parsing,
        prepares=facts.prepares,
        executes=facts.executes,
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
        if _qualified_lower(node) in _SETTING_VIEWS:
            facts.changes_parsing = True  # UPDATE pg_settings: a SET in disguise
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
    elif isinstance(node, ast.MergeStmt):
        _merge(node, facts)
    elif isinstance(node, ast.VariableSetStmt):
        facts.changes_parsing |= setting_changes_parsing(node.name, _set_value(node))


def _restricts(where: Any) -> bool:
    """A condition restricts rows when it mentions a column (or is WHERE CURRENT OF a cursor)
    and is not one of the tautologies :mod:`~airlock.gateway.postgres.tautology` knows."""
    if where is None:
        return False
    if not any(isinstance(n, ast.ColumnRef | ast.CurrentOfExpr) for n in _walk(where)):
        return False
    return not is_tautology(where)


def _merge(node: Any, facts: _Facts) -> None:
    actions = {_MERGE_ACTIONS.get(w.commandType) for w in node.mergeWhenClauses or ()}
    actions.discard(None)
    facts.kinds |= {a for a in actions if a is not None}
    if actions & {"update", "delete"} and not _restricts(node.joinCondition):
        facts.without_where = True  # MERGE … ON true WHEN MATCHED THEN DELETE: every row


def _set_value(node: Any) -> str | None:
    """The value of ``SET name = value`` as text; None for RESET / DEFAULT / no value."""
    args = node.args or ()
    if not args:
        return None
    first = args[0]
    value = getattr(getattr(first, "val", None), "sval", None)
    if value is None:
        value = getattr(getattr(first, "val", None), "ival", None)
    return str(value) if value is not None else "?"


def _qualified(schema: str | None, name: str) -> str:
    return f"{schema}.{name}" if schema else name


def _qualified_lower(node: Any) -> str:
    return _qualified(node.schemaname, node.relname or "").lower()


def _names(items: Any) -> list[str]:
    return [item.sval or "" for item in items if isinstance(item, ast.String)]


def _function(node: Any, facts: _Facts) -> None:
    name = ".".join(_names(node.funcname)).lower()
    facts.functions.append(name)
    if name.rpartition(".")[2] == "set_config":  # SELECT set_config('search_path', …) is a SET
        facts.kinds.add("set")
        args: list[Any] = list(node.args or ())
        setting = _const_text(args[0]) if args else None
        value = _const_text(args[1]) if len(args) > 1 else None
        # A name or value computed at run time cannot be judged: count it as changing parsing
        # (a value only for the settings that matter: set_config('search_path', $1) is fine).
        if setting is None or (value is None and setting.strip().lower() in PARSING_SETTINGS):
            facts.changes_parsing = True
        elif value is not None:
            facts.changes_parsing |= setting_changes_parsing(setting, value)


def _const_text(node: Any) -> str | None:
    if isinstance(node, ast.A_Const) and not node.isnull:
        value = getattr(node.val, "sval", None)
        return value if isinstance(value, str) else None
    return None


def _copy(node: Any, facts: _Facts) -> None:
    if node.is_from and node.relation is not None:
        facts.kinds.add("insert")  # COPY t FROM …: writes rows into t, as INSERT does
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


# ------------------------------------------------------------------- DO and function bodies


def _body(node: Any, text: str, facts: _Facts, depth: int) -> None:
    """Parse the SQL or PL/pgSQL body of a DO block or CREATE FUNCTION and count its statements
    for this one. Bodies in other languages stay opaque (the kinds ``do``/``create`` remain)."""
    options = node.args if isinstance(node, ast.DoStmt) else node.options
    language, body = "plpgsql" if isinstance(node, ast.DoStmt) else "sql", None
    for option in options or ():
        if not isinstance(option, ast.DefElem):
            continue
        if option.defname == "language" and isinstance(option.arg, ast.String):
            language = (option.arg.sval or "").lower()
        elif option.defname == "as":
            strings = _names(option.arg if isinstance(option.arg, list | tuple) else [option.arg])
            body = strings[0] if len(strings) == 1 else None
    if body is None or language not in ("sql", "plpgsql"):
        return
    if depth >= _MAX_BODY_DEPTH:
        facts.parsed = False
        return
    if language == "sql":
        for stmt in _analyse(body, depth + 1):
            facts.absorb(stmt)
        return
    for sql, dynamic in plpgsql_statements(text):
        if dynamic:
            facts.kinds.add("dynamic_sql")
        if sql is None:
            facts.parsed = False
            continue
        for stmt in _analyse(sql, depth + 1):
            facts.absorb(stmt)
