"""The SQL inside a PL/pgSQL body (``DO`` blocks, ``CREATE FUNCTION … LANGUAGE plpgsql``),
read with libpg_query's PL/pgSQL parser. Sans-I/O."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pglast
from pglast.parser import ParseError

__all__ = ["plpgsql_statements"]

# Statements that run text built at run time: what they run cannot be judged beforehand.
_DYNAMIC = frozenset({"PLpgSQL_stmt_dynexecute", "PLpgSQL_stmt_dynfors"})
_PLAIN_SQL = 0  # PLpgSQL_expr parseMode: a whole statement; other modes are expressions


def plpgsql_statements(statement: str) -> list[tuple[str | None, bool]]:
    """(SQL text, runs dynamic SQL?) for every statement and expression in the PL/pgSQL body
    of ``statement`` (a whole ``DO`` or ``CREATE FUNCTION``). An unreadable body gives
    ``[(None, False)]``."""
    try:
        tree = pglast.parse_plpgsql(statement)
    except (ParseError, ValueError):
        return [(None, False)]
    return list(_visit(tree))


def _visit(node: Any, key: str = "") -> Iterator[tuple[str | None, bool]]:
    if isinstance(node, list):
        for item in node:
            yield from _visit(item, key)
        return
    if not isinstance(node, dict):
        return
    if key in _DYNAMIC or "dynquery" in node:
        yield "", True  # nothing to judge but the fact itself
    for name, value in node.items():
        if name == "PLpgSQL_expr" and isinstance(value, dict):
            yield _expression(value), False
        else:
            yield from _visit(value, name)


def _expression(expr: dict[str, Any]) -> str | None:
    query = expr.get("query")
    if not isinstance(query, str):
        return None
    if expr.get("parseMode", _PLAIN_SQL) == _PLAIN_SQL:
        return query
    # An expression, or an assignment "target := expression": judge it as a SELECT.
    _, sep, value = query.partition(":=")
    return f"SELECT {value if sep else query}"
