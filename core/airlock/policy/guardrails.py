"""The ``guardrails:`` and ``guardrail_defaults:`` sections, and how rules decide.

A rule matches SQL statements (``sql:``) or HTTP requests (``http:``) and says ``allow``,
``deny`` or ``require_approval``. Every matching rule counts and the strictest action wins
(deny > require_approval > allow), naming the rule. Nothing matching → the defaults.

Matching is sans-I/O: the PostgreSQL gateway turns SQL text into :class:`SqlStatement` summaries
(with pglast) and :func:`decide_sql` judges them; :func:`decide_http` judges a request.
Globs (tables, paths, hosts) are compiled once at load: ``*`` matches within one name or path
segment, ``**`` (paths only) across segments.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import re2
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

__all__ = [
    "ACTIONS",
    "BUILTIN_RULE_IDS",
    "DEFAULT_RULE_IDS",
    "SQL_KINDS",
    "Action",
    "AmbiguousJson",
    "Decision",
    "GuardrailDefaults",
    "GuardrailRule",
    "HttpMatch",
    "HttpRequestInfo",
    "SqlKind",
    "SqlMatch",
    "SqlStatement",
    "decide_http",
    "decide_sql",
    "describe_json_body",
    "rules_for_gateway",
    "strictest",
]

Action = Literal["allow", "deny", "require_approval"]
ACTIONS: tuple[Action, ...] = ("allow", "require_approval", "deny")  # weakest first
_RANK = {action: rank for rank, action in enumerate(ACTIONS)}

SqlKind = Literal[
    "select",
    "insert",
    "update",
    "delete",
    "merge",
    "drop",
    "truncate",
    "alter",
    "create",
    "grant",
    "revoke",
    "copy",
    "copy_program",
    "copy_file",
    "do",
    "call",
    "dynamic_sql",
    "set",
    "vacuum",
    "other",
]
SQL_KINDS: tuple[str, ...] = typing.get_args(SqlKind)


def _check_kind(value: str) -> str:
    if value not in SQL_KINDS:
        close = difflib.get_close_matches(value, SQL_KINDS, n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise PydanticCustomError(
            "airlock_sql_kind",
            "unknown statement kind '{kind}'{hint} (kinds: {all})",
            {"kind": value[:40], "hint": hint, "all": ", ".join(SQL_KINDS)},
        )
    return value


# A Literal would do, but the loader cannot name the choices of a list item; this can.
SqlKindName = Annotated[
    str, AfterValidator(_check_kind), WithJsonSchema({"type": "string", "enum": list(SQL_KINDS)})
]

DEFAULT_RULE_IDS = {
    "sql_unparsable": "airlock.default.sql_unparsable",
    "sql_unmatched": "airlock.default.sql_unmatched",
    "http_unmatched": "airlock.default.http_unmatched",
}
# Rules no policy can switch off: what they refuse cannot be judged at all.
BUILTIN_RULE_IDS = {
    # a statement that would make the server read SQL differently from the gateway
    "parse_state": "airlock.builtin.parse_state",
    # PL/pgSQL running text built at run time, unless a rule naming dynamic_sql decides
    "dynamic_sql": "airlock.builtin.dynamic_sql",
}
GUARDRAIL_ID_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
_ID_RE = re.compile(GUARDRAIL_ID_PATTERN)
_NAME_GLOB_RE = re.compile(r"^[^\s.]+(\.[^\s.]+)?$")
_METHOD_RE = re.compile(r"^[A-Z]{1,16}$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, defer_build=True)


def _re2_options() -> Any:
    options = re2.Options()
    options.log_errors = False
    return options


@functools.lru_cache(maxsize=1024)
def _compiled_text(regex: str) -> Any:
    return re2.compile(regex, _re2_options())


@functools.lru_cache(maxsize=4096)
def _glob_regex(glob: str, separator: str, double_star: bool) -> re.Pattern[str]:
    """Anchored regex for ``glob``: ``*`` stays within one segment; ``**`` crosses them."""
    sep = re.escape(separator)
    out = []
    i = 0
    while i < len(glob):
        if double_star and glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif glob[i] == "*":
            out.append(f"[^{sep}]*" if sep else ".*")
            i += 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return re.compile("".join(out), re.IGNORECASE | re.DOTALL)


def _glob_match(glob: str, value: str, separator: str = ".", double_star: bool = False) -> bool:
    return _glob_regex(glob, separator, double_star).fullmatch(value) is not None


# ------------------------------------------------------------------------------------- SQL


@dataclass(frozen=True)
class SqlStatement:
    """What the guardrails know about one SQL statement.

    ``tables`` are ``schema.table`` or bare ``table`` (as written, identifiers normalised);
    ``without_where`` is true for a DELETE/UPDATE (also inside a WITH) whose WHERE is missing or
    mentions no column. ``functions`` are the functions it calls, lower-case, schema-qualified
    when written so. ``changes_parsing``: it sets something that makes the server read later SQL
    differently (denied by ``airlock.builtin.parse_state``). ``prepares``/``executes``: the
    prepared statement a ``PREPARE`` creates / an ``EXECUTE`` runs (the gateway judges an
    ``EXECUTE`` as the statement it runs).
    """

    text: str
    kinds: frozenset[str]
    tables: tuple[str, ...] = ()
    functions: tuple[str, ...] = ()
    without_where: bool = False
    parsed: bool = True
    changes_parsing: bool = False
    prepares: str | None = None
    executes: str | None = None


class SqlMatch(_Section):
    """Which statements a rule is about. Every condition given must hold (AND)."""

    kinds: tuple[SqlKindName, ...] = Field(
        default=(), description="Statement kinds (any of them); empty: every kind."
    )
    tables: tuple[str, ...] = Field(
        default=(),
        description="Target table globs, TABLE or SCHEMA.TABLE, case-insensitive; any of them. "
        "An unqualified table in the SQL matches on its table part whatever the schema.",
    )
    functions: tuple[str, ...] = Field(
        default=(),
        description="Function-name globs the statement calls (e.g. pg_read_file, dblink*).",
    )
    text: str | None = Field(
        default=None, description="RE2 regex searched in the statement text (use (?i) for case)."
    )
    without_where: StrictBool = Field(
        default=False,
        description="Only DELETE/UPDATE without a WHERE (or with one that names no column).",
    )

    @field_validator("tables", "functions")
    @classmethod
    def _name_globs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for glob in value:
            if not _NAME_GLOB_RE.match(glob):
                raise PydanticCustomError(
                    "airlock_name_glob",
                    "{glob!r} must be NAME or SCHEMA.NAME (no spaces, at most one dot)",
                    {"glob": glob[:80]},
                )
        return value

    @field_validator("text")
    @classmethod
    def _text_regex(cls, value: str | None) -> str | None:
        if value is not None:
            _check_regex(value)
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> SqlMatch:
        if not (self.kinds or self.tables or self.functions or self.text or self.without_where):
            raise PydanticCustomError(
                "airlock_match_empty",
                "an empty sql: match would catch every statement; give kinds, tables, "
                "functions, text or without_where (use guardrail_defaults for a blanket action)",
            )
        return self

    def matches(self, stmt: SqlStatement, *, whole: bool = False) -> bool:
        """True when ``stmt`` meets every condition of this match.

        ``whole`` (used for ``allow`` rules) asks for more: every kind of the statement is in
        ``kinds`` and every table it names is in ``tables``, so that allowing ``select`` does
        not also allow a ``WITH … DELETE`` that happens to contain a SELECT.
        """
        if self.kinds and not _covers(self.kinds, stmt.kinds, whole):
            return False
        if self.without_where and not stmt.without_where:
            return False
        if self.tables and not _tables_covered(self.tables, stmt.tables, whole):
            return False
        if self.functions and not any(
            _function_match(g, f) for g in self.functions for f in stmt.functions
        ):
            return False
        return self.text is None or _compiled_text(self.text).search(stmt.text) is not None


def _covers(wanted: Sequence[str], kinds: frozenset[str], whole: bool) -> bool:
    return kinds.issubset(wanted) if whole else not kinds.isdisjoint(wanted)


def _tables_covered(globs: Sequence[str], tables: Sequence[str], whole: bool) -> bool:
    hits = (any(_table_match(g, t) for g in globs) for t in tables)
    return bool(tables) and all(hits) if whole else any(hits)


def _table_match(glob: str, table: str) -> bool:
    g_schema, _, g_name = glob.rpartition(".")
    t_schema, _, t_name = table.rpartition(".")
    # "schema.*" / "*.*" in a statement: every table of a schema (DROP SCHEMA, DROP OWNED, ...)
    if t_name != "*" and not _glob_match(g_name, t_name):
        return False
    # An unqualified table may resolve to any schema on search_path (which SQL can change in
    # ways the gateway cannot see: set_config, ALTER ROLE, functions), so it matches any schema.
    return not g_schema or not t_schema or t_schema == "*" or _glob_match(g_schema, t_schema)


def _function_match(glob: str, function: str) -> bool:
    if "." in glob:
        return _glob_match(glob, function)
    return _glob_match(glob, function.rpartition(".")[2])


def _check_regex(value: str) -> None:
    try:
        _compiled_text(value)
    except re2.error as exc:
        raw = exc.args[0] if exc.args else exc
        why = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        raise PydanticCustomError(
            "airlock_regex",
            "not a valid RE2 regex: {why} (RE2 has no lookaround or backreferences)",
            {"why": why},
        ) from exc


# ------------------------------------------------------------------------------------ HTTP


@dataclass(frozen=True)
class HttpRequestInfo:
    """What the guardrails know about one HTTP request. ``json`` is the parsed body, if any."""

    method: str
    path: str
    host: str
    json: Any = None


JsonScalar = StrictBool | StrictInt | StrictFloat | StrictStr | None


class HttpMatch(_Section):
    """Which HTTP requests a rule is about. Every condition given must hold (AND)."""

    methods: tuple[str, ...] = Field(
        default=(), description="HTTP methods, upper-case (any of them); empty: every method."
    )
    path: str | None = Field(
        default=None,
        description="Path glob from the first '/': '*' within one segment, '**' across.",
    )
    host: str | None = Field(
        default=None,
        description="Upstream host glob ('*' matches any characters), case-insensitive.",
    )
    # Written `json:` in the policy; `json_body` in Python (BaseModel.json exists).
    json_body: dict[str, JsonScalar] = Field(
        default_factory=dict,
        alias="json",
        description="JSON body fields (dotted paths) that must equal these values.",
    )

    @field_validator("methods")
    @classmethod
    def _methods_shape(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for method in value:
            if not _METHOD_RE.match(method):
                raise PydanticCustomError(
                    "airlock_http_method", "{m!r} is not an upper-case HTTP method", {"m": method}
                )
        return value

    @field_validator("path")
    @classmethod
    def _path_shape(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise PydanticCustomError("airlock_http_path", "path globs start with '/'")
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> HttpMatch:
        if not (self.methods or self.path or self.host or self.json_body):
            raise PydanticCustomError(
                "airlock_match_empty",
                "an empty http: match would catch every request; give methods, path, host or json",
            )
        return self

    def matches(self, request: HttpRequestInfo) -> bool:
        """True when ``request`` meets every condition of this match."""
        if self.methods and request.method.upper() not in self.methods:
            return False
        if self.path is not None and not _glob_match(self.path, request.path, "/", True):
            return False
        if self.host is not None and not _glob_match(self.host, request.host, "", True):
            return False
        return all(_json_equals(request.json, k, v) for k, v in self.json_body.items())


def _json_equals(body: Any, dotted: str, expected: Any) -> bool:
    # Keys match without case (Unicode case folding): Go's encoding/json fills the field
    # ``Spec.Force`` from ``"SPEC": {"FORCE": true}`` (and "\u017f" for "s"). Any match counts.
    nodes = [body]
    for part in dotted.split("."):
        folded = part.casefold()
        nodes = [
            value
            for node in nodes
            if isinstance(node, Mapping)
            for key, value in node.items()
            if isinstance(key, str) and key.casefold() == folded
        ]
    return any(_json_scalar_equals(node, expected) for node in nodes)


def _json_scalar_equals(node: Any, expected: Any) -> bool:
    if isinstance(node, bool) or isinstance(expected, bool):  # true must not equal 1
        return node is expected
    return bool(node == expected)


# ----------------------------------------------------------------------------------- rules


class GuardrailRule(_Section):
    """One guardrail: what it matches (exactly one of ``sql``/``http``) and the action."""

    id: str = Field(
        description="Stable rule id, shown in events, errors and approvals.",
        json_schema_extra={"pattern": GUARDRAIL_ID_PATTERN},
    )
    sql: SqlMatch | None = Field(default=None, description="Match SQL statements.")
    http: HttpMatch | None = Field(default=None, description="Match HTTP requests.")
    action: Action = Field(description="allow | deny | require_approval.")
    gateways: tuple[str, ...] | None = Field(
        default=None,
        description="Gateway names the rule applies to; default: every gateway of its kind.",
    )
    description: str = Field(default="", description="Free text, shown with the decision.")

    @field_validator("id")
    @classmethod
    def _id_shape(cls, value: str) -> str:
        if not _ID_RE.match(value):
            raise PydanticCustomError(
                "airlock_rule_id",
                "rule id '{id}' must be 1-64 of a-z 0-9 - _ . starting with a letter or digit",
                {"id": value[:64]},
            )
        if value.startswith(("airlock.", "builtin.")):
            raise PydanticCustomError(
                "airlock_rule_id_reserved",
                "rule ids starting with airlock. or builtin. are reserved; pick another id",
            )
        return value

    @model_validator(mode="after")
    def _exactly_one_match(self) -> GuardrailRule:
        if (self.sql is None) == (self.http is None):
            raise PydanticCustomError(
                "airlock_rule_match",
                "a guardrail needs exactly one of sql: or http:",
            )
        return self

    @property
    def kind(self) -> Literal["postgres", "http"]:
        """The gateway kind this rule applies to."""
        return "postgres" if self.sql is not None else "http"


class GuardrailDefaults(_Section):
    """What happens when no rule matches, or SQL cannot be parsed."""

    sql_unparsable: Action = Field(
        default="deny", description="SQL the parser cannot read (deny: it cannot be judged)."
    )
    sql_unmatched: Action = Field(default="allow", description="SQL no rule matches.")
    http_unmatched: Action = Field(default="allow", description="HTTP requests no rule matches.")


@dataclass(frozen=True)
class Decision:
    """The outcome for one statement / request: the action and the rule that decided it.

    ``rule_id`` is a policy rule's id, or one of :data:`DEFAULT_RULE_IDS` when a default decided.
    ``index`` is the statement's position in a multi-statement string (0 for HTTP).
    """

    action: Action
    rule_id: str
    index: int = 0


def strictest(decisions: Iterable[Decision]) -> Decision | None:
    """The strictest decision (deny > require_approval > allow); the first one on ties."""
    best: Decision | None = None
    for decision in decisions:
        if best is None or _RANK[decision.action] > _RANK[best.action]:
            best = decision
    return best


def rules_for_gateway(
    rules: Sequence[GuardrailRule], gateway: str, kind: Literal["postgres", "http"]
) -> tuple[GuardrailRule, ...]:
    """The rules that apply to gateway ``gateway`` of kind ``kind``, in policy order."""
    return tuple(
        r for r in rules if r.kind == kind and (r.gateways is None or gateway in r.gateways)
    )


def _judge(rules: Iterable[tuple[str, Action]], fallback: Decision, index: int) -> Decision:
    found = strictest(Decision(action, rule_id, index) for rule_id, action in rules)
    return found if found is not None else fallback


def decide_sql(
    statements: Sequence[SqlStatement],
    rules: Sequence[GuardrailRule],
    defaults: GuardrailDefaults,
) -> list[Decision]:
    """One decision per statement (``rules`` already filtered with :func:`rules_for_gateway`)."""
    out = []
    for index, stmt in enumerate(statements):
        if not stmt.parsed:
            rule_id = DEFAULT_RULE_IDS["sql_unparsable"]
            out.append(Decision(defaults.sql_unparsable, rule_id, index))
            continue
        if stmt.changes_parsing:
            out.append(Decision("deny", BUILTIN_RULE_IDS["parse_state"], index))
            continue
        matching = [
            r for r in rules if r.sql is not None and r.sql.matches(stmt, whole=r.action == "allow")
        ]
        if "dynamic_sql" in stmt.kinds and not any(
            r.sql is not None and "dynamic_sql" in r.sql.kinds for r in matching
        ):
            out.append(Decision("deny", BUILTIN_RULE_IDS["dynamic_sql"], index))
            continue
        fallback = Decision(defaults.sql_unmatched, DEFAULT_RULE_IDS["sql_unmatched"], index)
        out.append(_judge(((r.id, r.action) for r in matching), fallback, index))
    return out


def decide_http(
    request: HttpRequestInfo, rules: Sequence[GuardrailRule], defaults: GuardrailDefaults
) -> Decision:
    """The decision for one request (``rules`` already filtered with :func:`rules_for_gateway`)."""
    hits = ((r.id, r.action) for r in rules if r.http is not None and r.http.matches(request))
    fallback = Decision(defaults.http_unmatched, DEFAULT_RULE_IDS["http_unmatched"])
    return _judge(hits, fallback, 0)


class AmbiguousJson(ValueError):
    """A body that starts like JSON but that parsers read differently (see
    :func:`describe_json_body`): judging it "not JSON" would let it past a JSON rule."""


def describe_json_body(body: bytes) -> Any:
    """Parse ``body`` as JSON for :class:`HttpRequestInfo`; None when it is not JSON.

    A body that starts with ``{`` or ``[`` but is not strict JSON raises :class:`AmbiguousJson`:
    upstream parsers disagree with Python's on invalid UTF-8 (replaced, not refused), duplicate
    keys (first or last wins), numbers past Python's digit limit, data after the first value (a
    streaming decoder stops there) and deep nesting."""
    try:
        return json.loads(body, object_pairs_hook=_unique_keys)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        start = body.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n")
        if start[:1] in (b"{", b"["):
            why = _json_problem(exc)
            raise AmbiguousJson(why) from None
        return None


def _json_problem(exc: Exception) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deep"
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8"
    return str(exc).partition(":")[0][:80]  # the kind of error, never the body's text


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data = dict(pairs)
    if len(data) != len(pairs):
        raise ValueError("duplicate key in an object")
    return data
