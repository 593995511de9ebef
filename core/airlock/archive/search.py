"""Search sessions with DuckDB: one documented view over a directory or an S3 prefix.

The view ``events`` has one row per event::

    session_id VARCHAR      the session directory name
    seq        BIGINT       position in the log
    ts         TIMESTAMPTZ  event time (UTC)
    type       VARCHAR      event type (session.start, process.exec, output, db.query, ...)
    platform   VARCHAR      from the session's session.start identity: github | gitlab | local
    repository VARCHAR      "owner/repo"
    actor      VARCHAR      who triggered the run
    run_id     VARCHAR      the CI run id
    text       VARCHAR      a searchable rendering: output text, argv, SQL, method + URL, ...
    rule_id    VARCHAR      guardrail / masking rule id when the event names one
    outcome    VARCHAR      decision or outcome (allow, deny, approved, denied, ...)
    data       JSON         the event's data object, as logged

and ``sessions(session_id, platform, repository, actor, run_id, started)`` has one row per
session. Queries run in a DuckDB whose file access is limited to the searched directories, so
``--sql`` can read the sessions but nothing else on the machine.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airlock.archive.layout import EVENTS_NAME, LOG_OBJECT, MANIFEST_NAME, join_key, parse_url
from airlock.audit.reader import find_logs, first_event
from airlock.errors import UsageError

if TYPE_CHECKING:
    import duckdb

__all__ = [
    "EVENTS_VIEW_COLUMNS",
    "SearchFilters",
    "athena_ddl",
    "build_query",
    "open_events",
    "parse_time",
    "run_query",
    "sync_s3_prefix",
]

EVENTS_VIEW_COLUMNS = (
    "session_id",
    "seq",
    "ts",
    "type",
    "platform",
    "repository",
    "actor",
    "run_id",
    "text",
    "rule_id",
    "outcome",
    "data",
)

_TEXT = """coalesce(
    data->>'text', data->>'sql', data->>'query',
    CASE WHEN json_type(data->'argv') = 'ARRAY'
         THEN array_to_string(from_json(data->'argv', '["VARCHAR"]'), ' ') END,
    nullif(concat_ws(' ', data->>'method', data->>'url'), ''),
    data->>'reason', data->>'message', CAST(data AS VARCHAR))"""

# rule_id and outcome as airlock.audit.describe gives them (tests/archive/test_views.py
# keeps the two in step): an approval decision names the rule of its request, and its outcome
# is approved / denied / expired.
_RULE_ID = """coalesce(e.data->>'rule_id', e.data->>'rule', e.data->'operation'->>'rule_id',
    r.rule_id)"""
_OUTCOME = """CASE
    WHEN e.type = 'approval.requested' THEN 'requested'
    WHEN e.type = 'approval.cancelled' THEN 'cancelled'
    WHEN e.type IN ('approval.decided', 'approval.expired') THEN CASE
        WHEN (e.data->>'approved') = 'true' THEN 'approved'
        WHEN (e.data->>'reason') = 'expired' THEN 'expired'
        ELSE 'denied' END
    WHEN e.type = 'airlock.error' THEN 'error'
    WHEN e.type = 'db.result' AND (e.data->'error') IS NOT NULL THEN 'error'
    ELSE coalesce(e.data->>'approval', e.data->>'action', e.data->>'decision',
                  e.data->>'outcome') END"""

_LOG_RE = re.escape(EVENTS_NAME)  # the file names are the audit reader's
_ARCHIVED_RE = re.escape(LOG_OBJECT)

# Only constants and quoted file globs are interpolated; user values are always parameters.
_VIEWS = f"""
CREATE VIEW raw_events AS
SELECT regexp_extract(filename, '([^/]+)/{_LOG_RE}(\\.gz)?$', 1) AS session_id,
       seq, ts, type, data
FROM read_json({{files}}, format = 'newline_delimited', filename = true, ignore_errors = true,
               columns = {{{{seq: 'BIGINT', ts: 'VARCHAR', type: 'VARCHAR', data: 'JSON'}}}});
CREATE VIEW approval_requests AS
SELECT session_id, data->>'request_id' AS request_id, data->'operation'->>'rule_id' AS rule_id
FROM raw_events WHERE type = 'approval.requested';
CREATE VIEW events AS
SELECT e.session_id, e.seq, CAST(e.ts AS TIMESTAMPTZ) AS ts, e.type,
       s.platform, s.repository, s.actor, s.run_id,
       {_TEXT} AS text,
       {_RULE_ID} AS rule_id,
       {_OUTCOME} AS outcome,
       e.data
FROM raw_events e LEFT JOIN sessions s USING (session_id)
LEFT JOIN approval_requests r
       ON e.type LIKE 'approval.%' AND r.session_id = e.session_id
      AND r.request_id = (e.data->>'request_id');
"""  # noqa: S608


@dataclass(frozen=True)
class SearchFilters:
    """The filters of `airlock search`; every field is optional and they combine with AND."""

    types: tuple[str, ...] = ()
    text: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    platform: str | None = None
    repo: str | None = None
    actor: str | None = None
    rule: str | None = None
    outcome: str | None = None
    session: str | None = None
    limit: int | None = 1000


def _globs(root: Path) -> list[str]:
    root = root.resolve()
    candidates = [
        (root / EVENTS_NAME, str(root / EVENTS_NAME)),
        (None, str(root / "*" / EVENTS_NAME)),
        (None, str(root / "**" / LOG_OBJECT)),
    ]
    found = []
    for exact, pattern in candidates:
        if exact is not None:
            if exact.is_file():
                return [pattern]
            continue
        base, _, tail = pattern.partition("*")
        if next(Path(base).glob("*" + tail), None) is not None:
            found.append(pattern)
    return found


def _sql_list(items: Sequence[str]) -> str:
    return "[" + ", ".join("'" + s.replace("'", "''") + "'" for s in items) + "]"


def open_events(roots: Sequence[Path]) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the ``events`` and ``sessions`` views over ``roots``.

    Each root is a session directory, a directory of sessions (``<id>/events.jsonl``) or a
    local archive (``**/events.jsonl.gz``). File access is then locked to those roots.
    """
    import duckdb

    files = [g for root in roots for g in _globs(root)]
    if not files:
        names = ", ".join(str(r) for r in roots)
        raise UsageError(f"no sessions found under {names}", hint="point at a sessions directory")
    con = duckdb.connect(":memory:")
    allowed = _sql_list([str(r.resolve()) + "/" for r in roots])
    con.execute("SET TimeZone = 'UTC'")
    _load_sessions(con, roots)
    con.execute(_VIEWS.format(files=_sql_list(files)))
    con.execute(f"SET allowed_directories = {allowed}")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def _session_row(
    log: Path,
) -> tuple[str, str | None, str | None, str | None, str | None, str | None]:
    first = first_event(log)
    data = first.get("data") if first.get("type") == "session.start" else None
    ident = data.get("identity") if isinstance(data, dict) else None
    ident = ident if isinstance(ident, dict) else {}

    def field(name: str) -> str | None:
        value = ident.get(name)
        return None if value is None else str(value)

    started = str(first["ts"]) if ident and first.get("ts") else None
    return (
        log.parent.name,
        field("platform"),
        field("repository"),
        field("actor"),
        field("run_id"),
        started,
    )


def _load_sessions(con: duckdb.DuckDBPyConnection, roots: Sequence[Path]) -> None:
    """The sessions table, from each log's first line (its session.start) — one small read
    per session instead of a second scan of every log."""
    con.execute(
        "CREATE TABLE sessions (session_id VARCHAR, platform VARCHAR, repository VARCHAR, "
        "actor VARCHAR, run_id VARCHAR, started TIMESTAMPTZ)"
    )
    rows = [_session_row(log) for root in roots for log in find_logs(root.resolve())]
    if rows:
        con.executemany("INSERT INTO sessions VALUES (?, ?, ?, ?, ?, CAST(? AS TIMESTAMPTZ))", rows)


def build_query(filters: SearchFilters) -> tuple[str, list[Any]]:
    """The SELECT for ``filters``, with ``?`` parameters (never interpolated values)."""
    where: list[str] = []
    params: list[Any] = []

    def add(clause: str, *values: Any) -> None:
        where.append(clause)
        params.extend(values)

    if filters.types:
        add(f"type IN ({', '.join('?' for _ in filters.types)})", *filters.types)
    if filters.text:
        add("contains(lower(text), lower(?))", filters.text)
    if filters.since:
        add("ts >= ?", filters.since)
    if filters.until:
        add("ts < ?", filters.until)
    for column, value in (
        ("platform", filters.platform),
        ("repository", filters.repo),
        ("actor", filters.actor),
        ("rule_id", filters.rule),
        ("outcome", filters.outcome),
        ("session_id", filters.session),
    ):
        if value:
            add(f"{column} = ?", value)
    columns = ", ".join(c for c in EVENTS_VIEW_COLUMNS if c != "data")
    sql = f"SELECT {columns} FROM events"  # noqa: S608 - fixed column names
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY ts, session_id, seq"
    if filters.limit:
        sql += f" LIMIT {int(filters.limit)}"
    return sql, params


def run_query(
    con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run ``sql``; return column names and rows. DuckDB errors become UsageError."""
    import duckdb

    try:
        cursor = con.execute(sql, list(params))
        rows = cursor.fetchall()
    except duckdb.Error as exc:
        raise UsageError(
            f"query failed: {exc}", hint="the view is described in docs/search.md"
        ) from exc
    columns = [d[0] for d in cursor.description or []]
    return columns, rows


_RELATIVE = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(value: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 time (UTC when no offset) or a relative one like ``24h`` / ``7d`` ago."""
    now = now or datetime.now(UTC)
    match = _RELATIVE.match(value.strip())
    if match:
        return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"cannot read the time {value!r}", hint="use ISO 8601 (2026-11-25T17:00Z) or 24h, 7d"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def sync_s3_prefix(
    url: str,
    cache_dir: Path,
    endpoint_url: str | None = None,
    *,
    on_total: Callable[[int], None] | None = None,
    on_item: Callable[[str], None] | None = None,
) -> Path:
    """Mirror the logs and manifests under an S3 prefix into ``cache_dir``; return the root.

    Objects already in the cache are not downloaded again (archived objects are immutable under
    Object Lock). ``on_total`` hears how many objects there are, ``on_item`` each one done.
    """
    from airlock.archive.s3 import S3Sink

    scheme, bucket, prefix = parse_url(url)
    if scheme != "s3":
        raise UsageError(f"{url!r} is not an s3:// URL")
    sink = S3Sink(bucket, prefix, endpoint_url=endpoint_url)
    root = cache_dir / bucket / prefix
    wanted = [k for k in sink.list_keys("") if k.endswith((f"/{LOG_OBJECT}", f"/{MANIFEST_NAME}"))]
    if not any(k.endswith(f"/{LOG_OBJECT}") for k in wanted):
        raise UsageError(
            f"no archived sessions found under {url}",
            hint="check the bucket and prefix (as given to `airlock archive --to`) and "
            "--endpoint-url; sessions sit under <platform>/<owner>/<repo>/<yyyy>/<mm>/<dd>/",
        )

    if on_total is not None:
        on_total(len(wanted))

    def fetch(key: str) -> None:
        dest = root / key
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.part")
            sink.download(key, tmp)
            tmp.rename(dest)
        if on_item is not None:
            on_item(key)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(fetch, wanted))
    return root if root.exists() else cache_dir


def athena_ddl(url: str, table: str = "airlock_events", since: str = "2024/01/01") -> str:
    """CREATE EXTERNAL TABLE + view for Athena over the archive layout at ``url``.

    Partition projection follows the layout: platform (enum), owner and repo (injected: a query
    names them), and the day (``yyyy/MM/dd``). The run and session directories below the day are
    read as part of the partition; the view keeps only the event logs.
    """
    scheme, bucket, prefix = parse_url(url)
    if scheme != "s3" or not re.fullmatch(r"[A-Za-z0-9_]+", table):
        raise UsageError("--athena-ddl needs an s3:// URL and a table name of letters, digits, _")
    location = f"s3://{join_key(bucket, prefix)}/"
    return _ATHENA.format(
        table=table, location=location, since=since, log_re=_ARCHIVED_RE, log_name=LOG_OBJECT
    )


_ATHENA = """-- Athena (Trino engine v3) table over the Airlock archive at {location}
CREATE EXTERNAL TABLE IF NOT EXISTS {table}_raw (
  seq BIGINT,
  ts STRING,
  type STRING,
  prev STRING,
  data STRING
)
PARTITIONED BY (platform STRING, owner STRING, repo STRING, day STRING)
ROW FORMAT SERDE 'org.openx.data.jsonserde.JsonSerDe'
WITH SERDEPROPERTIES ('ignore.malformed.json' = 'true')
LOCATION '{location}'
TBLPROPERTIES (
  'projection.enabled' = 'true',
  'projection.platform.type' = 'enum',
  'projection.platform.values' = 'github,gitlab,local',
  'projection.owner.type' = 'injected',
  'projection.repo.type' = 'injected',
  'projection.day.type' = 'date',
  'projection.day.format' = 'yyyy/MM/dd',
  'projection.day.range' = '{since},NOW',
  'projection.day.interval' = '1',
  'projection.day.interval.unit' = 'DAYS',
  'storage.location.template' = '{location}${{platform}}/${{owner}}/${{repo}}/${{day}}/'
);

-- The same columns as `airlock search` (docs/search.md); manifests are filtered out by path.
-- An approval decision names the rule of its request (joined by request_id in the same log).
CREATE OR REPLACE VIEW {table} AS
WITH approval_requests AS (
  SELECT "$path" AS path, json_extract_scalar(data, '$.request_id') AS request_id,
         json_extract_scalar(data, '$.operation.rule_id') AS rule_id
  FROM {table}_raw WHERE type = 'approval.requested'
)
SELECT
  regexp_extract(e."$path", '/([^/]+)/{log_re}$', 1) AS session_id,
  e.seq,
  from_iso8601_timestamp(e.ts) AS ts,
  e.type,
  e.platform,
  e.owner || '/' || e.repo AS repository,
  e.owner,
  e.repo,
  e.day,
  regexp_extract(e."$path", '/([^/]+)/[^/]+/{log_re}$', 1) AS run_id,
  coalesce(json_extract_scalar(e.data, '$.text'), json_extract_scalar(e.data, '$.sql'),
           json_extract_scalar(e.data, '$.query'),
           array_join(try_cast(json_extract(e.data, '$.argv') AS array(varchar)), ' '),
           nullif(concat_ws(' ', json_extract_scalar(e.data, '$.method'),
                            json_extract_scalar(e.data, '$.url')), ''),
           json_extract_scalar(e.data, '$.reason'), json_extract_scalar(e.data, '$.message'),
           e.data) AS text,
  coalesce(json_extract_scalar(e.data, '$.rule_id'), json_extract_scalar(e.data, '$.rule'),
           json_extract_scalar(e.data, '$.operation.rule_id'), r.rule_id) AS rule_id,
  CASE
    WHEN e.type = 'approval.requested' THEN 'requested'
    WHEN e.type = 'approval.cancelled' THEN 'cancelled'
    WHEN e.type IN ('approval.decided', 'approval.expired') THEN CASE
      WHEN json_extract_scalar(e.data, '$.approved') = 'true' THEN 'approved'
      WHEN json_extract_scalar(e.data, '$.reason') = 'expired' THEN 'expired'
      ELSE 'denied' END
    WHEN e.type = 'airlock.error' THEN 'error'
    WHEN e.type = 'db.result' AND json_extract(e.data, '$.error') IS NOT NULL THEN 'error'
    ELSE coalesce(json_extract_scalar(e.data, '$.approval'),
                  json_extract_scalar(e.data, '$.action'),
                  json_extract_scalar(e.data, '$.decision'),
                  json_extract_scalar(e.data, '$.outcome'))
  END AS outcome,
  e.data
FROM {table}_raw e
LEFT JOIN approval_requests r
  ON e.type LIKE 'approval.%' AND r.path = e."$path"
 AND r.request_id = json_extract_scalar(e.data, '$.request_id')
WHERE e."$path" LIKE '%/{log_name}';

-- Example: SELECT ts, type, text FROM {table}
--   WHERE owner = 'acme' AND repo = 'api' AND day >= '2026/11/01' AND type = 'db.query';
"""
