"""The Athena DDL from `airlock search --athena-ddl`, checked by engines rather than by its text.

sqlglot parses each statement with its Athena dialect (Hive DDL, Trino view); the view is then
transpiled to DuckDB and run over a table laid out as the DDL says — its own columns, its
partitions read off each object's key through ``storage.location.template`` — holding the
objects that `airlock archive` really wrote. A column the events do not have, a JSON path they
do not use or a template that does not match the layout gives rows that differ from `airlock
search` and the describer, and the test fails.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest
import sqlglot
from sqlglot import exp
from tests.archive.conftest import GITHUB, write_session
from tests.archive.test_views import APPROVALS

from airlock.archive.archiver import ArchiveOptions, archive_session
from airlock.archive.local import LocalSink
from airlock.archive.search import athena_ddl, open_events, run_query
from airlock.audit import SigningKey
from airlock.audit.describe import Describer
from airlock.events import Identity

LOCATION = "s3://acme-audit/airlock/"
TABLE = "airlock_events"

EVENTS: list[tuple[str, dict[str, Any]]] = [
    ("process.exec", {"pid": 7, "argv": ["psql", "-c", "select 1"], "cwd": "/w"}),
    ("output", {"stream": "stdout", "text": "hello\n"}),
    ("db.query", {"sql": "DELETE FROM t", "gateway": "appdb"}),
    ("db.result", {"gateway": "appdb", "error": {"sqlstate": "42P01", "message": "no t"}}),
    ("http.request", {"method": "POST", "url": "https://api.github.com/repos/a/b/pulls"}),
    ("http.response", {"status": 201}),
    ("net.connect", {"host": "evil.example", "port": 443, "outcome": "deny", "rule": "egress"}),
    ("airlock.error", {"message": "broker unreachable"}),
    *APPROVALS,
    ("approval.cancelled", {"request_id": "r9", "reason": "client gone"}),
    ("process.exit", {"pid": 7, "exit_code": 0}),
]


def _statements(ddl: str) -> list[exp.Expression]:
    """Each statement parsed alone, as Athena routes it (DDL to Hive, the view to Trino)."""
    parsed = []
    for chunk in re.split(r";\s*\n", ddl):
        code = "\n".join(line for line in chunk.splitlines() if not line.startswith("--"))
        if code.strip():
            parsed.append(sqlglot.parse_one(code, read="athena"))
    return parsed


def _properties(create: exp.Create) -> dict[str, str]:
    props = create.args["properties"].expressions
    return {p.this.name: p.args["value"].name for p in props if type(p) is exp.Property}


def _columns(schema: exp.Schema) -> list[tuple[str, str]]:
    return [(c.name, c.args["kind"].sql("duckdb")) for c in schema.expressions]


def _template_regex(props: dict[str, str]) -> re.Pattern[str]:
    """The key pattern the partition projection reads: one named group per partition."""
    template = props["storage.location.template"]
    assert template.startswith(LOCATION)
    day = re.escape(props["projection.day.format"])
    day = day.replace("yyyy", r"\d{4}").replace("MM", r"\d{2}").replace("dd", r"\d{2}")
    pattern = re.escape(template[len(LOCATION) :])
    for name in re.findall(r"\\\$\\\{(\w+)\\\}", pattern):
        kind = props[f"projection.{name}.type"]
        if kind == "enum":
            body = "|".join(map(re.escape, props[f"projection.{name}.values"].split(",")))
        elif kind == "date":
            body = day
        else:
            assert kind == "injected"
            body = "[^/]+"
        pattern = pattern.replace(rf"\$\{{{name}\}}", f"(?P<{name}>{body})")
    return re.compile(pattern)


def _objects(root: Path) -> Iterator[str]:
    """The keys an S3 listing of the archive gives (the local sink's lock sidecars are not)."""
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            yield path.relative_to(root).as_posix()


def _serde_rows(path: Path, columns: list[tuple[str, str]]) -> Iterator[list[Any]]:
    """Rows as the OpenX JSON SerDe gives them: top-level keys by column name, a nested value
    as its JSON text, a line that is not one JSON object skipped (ignore.malformed.json)."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    for line in raw.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if not isinstance(obj, dict):
            continue
        row = []
        for name, _ in columns:
            value = obj.get(name)
            row.append(
                json.dumps(value, separators=(",", ":"))
                if isinstance(value, dict | list)
                else value
            )
        yield row


def _load_raw(con: duckdb.DuckDBPyConnection, table: exp.Create, archive: Path) -> None:
    props = _properties(table)
    columns = _columns(table.this)
    partitions = _columns(table.args["properties"].find(exp.PartitionedByProperty).this)
    every = [*columns, *partitions, ("$path", "TEXT")]
    con.execute(
        f"CREATE TABLE {table.this.this.name} (" + ", ".join(f'"{n}" {t}' for n, t in every) + ")"
    )
    where = _template_regex(props)
    keys = list(_objects(archive))
    assert keys
    for key in keys:
        match = where.match(key)
        assert match, f"{key} is outside every partition of {props['storage.location.template']}"
        parts = [match.group(name) for name, _ in partitions]
        for row in _serde_rows(archive / key, columns):
            con.execute(
                f"INSERT INTO {table.this.this.name} VALUES ({', '.join('?' for _ in every)})",
                [*row, *parts, LOCATION + key],
            )


@pytest.fixture
def archive(tmp_path: Path, signing_key: SigningKey) -> Path:
    """Two sessions of two repositories, archived by the archive code into a local directory."""
    sessions = tmp_path / "sessions"
    other = Identity(**{**GITHUB.to_dict(), "repository": "acme/web", "run_id": "77"})
    root = tmp_path / "archive"
    for identity in (GITHUB, other):
        session = write_session(sessions, signing_key, identity=identity, events=EVENTS)
        archive_session(session, LocalSink(root), ArchiveOptions(allow_unlocked=True))
    return root


def _athena(archive: Path) -> tuple[duckdb.DuckDBPyConnection, str]:
    table, view, *rest = _statements(athena_ddl(LOCATION.rstrip("/"), table=TABLE))
    assert isinstance(table, exp.Create) and table.kind == "TABLE"
    assert isinstance(view, exp.Create) and view.kind == "VIEW" and not rest
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    _load_raw(con, table, archive)
    con.execute(view.sql("duckdb"))
    example = re.search(r"-- Example: (SELECT .*?;)$", athena_ddl(LOCATION), re.S | re.M)
    assert example
    return con, " ".join(line.lstrip("- ") for line in example.group(1).splitlines())


COMPARED = "session_id, seq, type, repository, run_id, text, rule_id, outcome"


def test_athena_view_gives_what_search_gives_over_archived_sessions(archive: Path) -> None:
    con, _ = _athena(archive)
    athena = con.execute(f"SELECT {COMPARED} FROM {TABLE} ORDER BY session_id, seq").fetchall()
    search = open_events([archive])
    _, expected = run_query(search, f"SELECT {COMPARED} FROM events ORDER BY session_id, seq")
    assert len(athena) == 2 * (len(EVENTS) + 2)  # manifests are not events
    assert athena == expected
    assert {r[3] for r in athena} == {"acme/api", "acme/web"}
    assert {r[4] for r in athena} == {"9001", "77"}


def test_athena_rule_and_outcome_are_the_describers(archive: Path) -> None:
    con, _ = _athena(archive)
    log = next(archive.rglob("events.jsonl.gz"))
    session_id = log.parent.name
    rows = con.execute(
        f"SELECT seq, rule_id, outcome FROM {TABLE} WHERE session_id = ? ORDER BY seq",
        [session_id],
    ).fetchall()
    describer = Describer()
    lines = gzip.decompress(log.read_bytes()).decode().splitlines()
    views = [describer.view(json.loads(line)) for line in lines]
    assert rows == [(v.seq, v.rule_id, v.outcome) for v in views]
    assert ("approval.decided", "no-drop", "denied") in con.execute(
        f"SELECT type, rule_id, outcome FROM {TABLE} WHERE outcome = 'denied'"
    ).fetchall()


def test_athena_example_query_names_real_partitions(archive: Path) -> None:
    con, example = _athena(archive)
    today = datetime.now(UTC).strftime("%Y/%m/%d")
    query = sqlglot.transpile(example.replace("2026/11/01", today), read="athena", write="duckdb")
    rows = con.execute(query[0]).fetchall()
    assert [r[1:] for r in rows] == [("db.query", "DELETE FROM t")]


def test_a_wrong_column_or_json_path_in_the_ddl_fails(
    archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check above is not vacuous: break the DDL as a typo would, and the rows differ."""
    import airlock.archive.search as search_module

    good = search_module._ATHENA
    search = open_events([archive])
    _, expected = run_query(search, f"SELECT {COMPARED} FROM events ORDER BY session_id, seq")
    for broken in (
        good.replace("  type STRING,", "  kind STRING,", 1),
        good.replace("'$.operation.rule_id') AS rule_id", "'$.op.rule_id') AS rule_id"),
        good.replace("${{owner}}/${{repo}}", "${{repo}}/${{owner}}"),
    ):
        assert broken != good
        monkeypatch.setattr(search_module, "_ATHENA", broken)
        assert _rows_or_refusal(archive) != expected


def _rows_or_refusal(archive: Path) -> list[Any] | str:
    """The view's rows, or the engine's refusal of it (a column that is not there)."""
    try:
        con, _ = _athena(archive)
        return con.execute(f"SELECT {COMPARED} FROM {TABLE} ORDER BY session_id, seq").fetchall()
    except duckdb.BinderException as exc:
        return str(exc)
