"""Conditions that hold for every row, as far as the text alone can tell. Sans-I/O.

Counted as a tautology (so ``DELETE … WHERE <it>`` counts as ``without_where``): the constant
``true`` (also ``'t'::bool`` and the like), a comparison of two equal constants (``1 = 1``,
``'a' = 'a'``, ``2 >= 2``), a column compared with itself (``id = id``, ``id <= id``: true on
every non-NULL row), ``x IS NULL OR x IS NOT NULL`` is *not* (it needs two branches on one
column and is left alone), ``NOT`` of a contradiction (``NOT false``), an ``OR`` with a
tautological branch, an ``AND`` whose branches all are. Out of reach: anything that needs the
schema or the data (``id IS NOT NULL`` on a NOT NULL column, ``id > 0`` on a serial).
"""

from __future__ import annotations

from typing import Any

from pglast import ast
from pglast.enums import A_Expr_Kind, BoolExprType

__all__ = ["is_tautology"]

_REFLEXIVE = frozenset({"=", "<=", ">="})
_COMPARE = {
    "=": lambda a, b: a == b,
    "<>": lambda a, b: a != b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}
_TRUE_TEXT = frozenset({"t", "true", "y", "yes", "on", "1"})


def is_tautology(node: Any) -> bool:
    """True when ``node`` (a WHERE or ON condition) holds for every row it can see."""
    return _truth(node) is True


def _truth(node: Any) -> bool | None:
    """True / False when ``node`` is constant that way, None when it depends on the row."""
    if isinstance(node, ast.BoolExpr):
        return _bool_expr(node)
    if isinstance(node, ast.A_Expr) and node.kind == A_Expr_Kind.AEXPR_OP:
        return _comparison(node)
    constant = _constant(node)
    if isinstance(constant, bool):
        return constant
    return None


def _bool_expr(node: Any) -> bool | None:
    values = [_truth(arg) for arg in node.args or ()]
    if node.boolop == BoolExprType.NOT_EXPR:
        return None if values[0] is None else not values[0]
    if node.boolop == BoolExprType.OR_EXPR:
        return True if True in values else (False if all(v is False for v in values) else None)
    return False if False in values else (True if all(v is True for v in values) else None)


def _comparison(node: Any) -> bool | None:
    names = [getattr(n, "sval", "") for n in node.name or ()]
    op = names[-1] if names else ""
    if op not in _COMPARE:
        return None
    if _same_column(node.lexpr, node.rexpr):
        return True if op in _REFLEXIVE else None
    left, right = _constant(node.lexpr), _constant(node.rexpr)
    if left is None or right is None or type(left) is not type(right):
        return None
    try:
        return bool(_COMPARE[op](left, right))
    except TypeError:
        return None


def _same_column(left: Any, right: Any) -> bool:
    if not (isinstance(left, ast.ColumnRef) and isinstance(right, ast.ColumnRef)):
        return False
    return _column_name(left) == _column_name(right)


def _column_name(node: Any) -> tuple[str, ...]:
    return tuple(getattr(f, "sval", "*") for f in node.fields or ())


def _constant(node: Any) -> bool | int | float | str | None:
    """The value of a literal (also through a cast); None when ``node`` is not one."""
    if isinstance(node, ast.TypeCast):
        inner = _constant(node.arg)
        names = node.typeName.names if node.typeName is not None else ()
        type_name = [getattr(n, "sval", "") for n in names or ()]
        if type_name and type_name[-1] in ("bool", "boolean") and isinstance(inner, str):
            return inner.strip().lower() in _TRUE_TEXT
        return inner
    if not isinstance(node, ast.A_Const) or node.isnull:
        return None
    val = node.val
    if isinstance(val, ast.Boolean):
        return bool(val.boolval)
    if isinstance(val, ast.Integer) and val.ival is not None:
        return int(val.ival)
    if isinstance(val, ast.Float) and val.fval is not None:
        return float(val.fval)
    if isinstance(val, ast.String):
        return str(val.sval)
    return None
