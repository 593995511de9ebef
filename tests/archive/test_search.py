"""`airlock search` over a generated corpus of 1,000 real sealed sessions."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.archive.cli import run_cli
from tests.archive.conftest import new_bucket, write_session
from tests.support.moto_server import MotoServer

from airlock.archive import ArchiveOptions, archive_session
from airlock.archive.local import LocalSink
from airlock.archive.s3 import S3Sink
from airlock.archive.search import (
    SearchFilters,
    athena_ddl,
    build_query,
    open_events,
    parse_time,
    run_query,
)
from airlock.audit import SigningKey
from airlock.errors import ExitCode, UsageError
from airlock.events import Identity

N = 1000
REPOS = ("acme/api", "acme/web", "other/tool", "acme/db")


def _events(i: int) -> list[tuple[str, dict[str, Any]]]:
    events: list[tuple[str, dict[str, Any]]] = [
        ("process.exec", {"pid": 10 + i, "argv": ["make", f"target{i}"]}),
        ("output", {"stream": "stdout", "text": f"build {i} ok\n"}),
    ]
    if i % 50 == 0:
        events.append(("output", {"stream": "stdout", "text": "password=[MASKED:env:DB_PASSWORD]"}))
    if i % 5 == 0:
        events.append(("db.query", {"sql": f"DROP TABLE t{i}"}))
        action = "deny" if i % 10 == 0 else "require_approval"
        events.append(("guardrail.decision", {"rule_id": "no-drop", "action": action}))
    if i % 10 == 5:  # the events the gate really writes (docs/approvals.md)
        op = {"kind": "sql", "text": f"DROP TABLE t{i}", "rule_id": "no-drop"}
        events.append(("approval.requested", {"request_id": f"r{i}", "operation": op}))
        decision = {"request_id": f"r{i}", "approved": i % 20 == 5, "by": "dba", "reason": ""}
        events.append(("approval.decided", decision))
    return events


def _identity(i: int) -> Identity:
    return Identity(
        platform="github" if i % 3 else "gitlab",
        repository=REPOS[i % 4],
        run_id=str(5000 + i),
        actor=f"user{i % 10}",
    )


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory, signing_key: SigningKey) -> Path:
    """1,000 sealed sessions with known contents, written once for the whole run."""
    root = tmp_path_factory.mktemp("corpus")
    for i in range(N):
        write_session(
            root, signing_key, identity=_identity(i), events=_events(i), session_id=f"s{i:04d}"
        )
    return root


@pytest.fixture(scope="session")
def con(corpus: Path) -> Iterator[Any]:
    connection = open_events([corpus])
    yield connection
    connection.close()


def _count(con: Any, **filters: Any) -> int:
    sql, params = build_query(SearchFilters(limit=None, **filters))
    return len(run_query(con, sql, params)[1])


def test_every_session_and_event_is_in_the_view(con: Any) -> None:
    _, rows = run_query(con, "SELECT count(*), count(DISTINCT session_id) FROM events")
    expected = sum(len(_events(i)) + 2 for i in range(N))
    assert rows == [(expected, N)]
    _, sessions = run_query(con, "SELECT count(*) FROM sessions WHERE repository = 'acme/api'")
    assert sessions == [(N // 4,)]


def test_filters_by_type_repo_actor_platform(con: Any) -> None:
    expected = sum(1 for i in range(N) if i % 5 == 0 and REPOS[i % 4] == "acme/api")
    assert _count(con, types=("db.query",), repo="acme/api") == expected
    expected = sum(1 for i in range(N) if i % 10 == 3 and i % 3 == 0)
    assert _count(con, types=("process.exec",), actor="user3", platform="gitlab") == expected


def test_filters_by_rule_and_outcome(con: Any) -> None:
    assert _count(con, rule="no-drop", outcome="deny") == N // 10
    assert _count(con, types=("approval.decided",), outcome="approved") == N // 20
    assert _count(con, outcome="denied") == N // 20
    assert _count(con, outcome="requested") == N // 10
    # a decision names the rule of its request: guardrails, requests and decisions
    assert _count(con, rule="no-drop") == N // 5 + N // 10 + N // 10
    assert _count(con, rule="no-drop", types=("approval.decided",)) == N // 10


def test_text_search_is_case_insensitive_and_matches_argv(con: Any) -> None:
    sql, params = build_query(SearchFilters(text="TARGET123"))
    _, rows = run_query(con, sql, params)
    assert [(r[0], r[3]) for r in rows] == [("s0123", "process.exec")]
    assert _count(con, text="[MASKED:env:DB_PASSWORD]") == N // 50


def test_time_window(con: Any) -> None:
    _, rows = run_query(con, "SELECT ts FROM events WHERE session_id = 's0500' AND seq = 0")
    middle = rows[0][0]
    before = _count(con, types=("session.start",), until=middle)
    after = _count(con, types=("session.start",), since=middle)
    assert before + after == N
    assert 0 < before < N
    assert _count(con, since=parse_time("2000-01-01"), until=parse_time("2000-01-02")) == 0


def test_cli_formats(corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = [
        "search",
        str(corpus),
        "--type",
        "guardrail.decision",
        "--outcome",
        "deny",
        "--limit",
        "5",
    ]
    assert run_cli([*base, "--format", "json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 5
    assert {r["rule_id"] for r in records} == {"no-drop"}
    assert records[0]["ts"].endswith("Z")

    assert run_cli([*base, "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 5 and rows[0]["outcome"] == "deny"

    assert run_cli([*base, "--format", "table"]) == 0
    out = capsys.readouterr().out
    assert "5 row(s)" in out and "no-drop" in out


def test_cli_sql_and_its_sandbox(corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sql = "SELECT repository, count(*) AS n FROM sessions GROUP BY ALL ORDER BY repository"
    assert run_cli(["search", str(corpus), "--sql", sql, "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [f"{r},250" for r in sorted(REPOS)]

    outside = "SELECT * FROM read_text('/etc/hostname')"
    assert run_cli(["search", str(corpus), "--sql", outside]) == ExitCode.USAGE
    assert "disabled by configuration" in capsys.readouterr().err


def test_no_sessions_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        open_events([tmp_path])


def test_search_a_local_archive_and_an_s3_prefix(
    signing_key: SigningKey,
    tmp_path: Path,
    moto_server: MotoServer,
    s3: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sessions = [
        write_session(tmp_path / "s", signing_key, identity=_identity(i), events=_events(i))
        for i in (0, 1, 2)
    ]
    bucket = new_bucket(s3)
    for session in sessions:
        archive_session(
            session, LocalSink(tmp_path / "archive"), ArchiveOptions(allow_unlocked=True)
        )
        archive_session(session, S3Sink(bucket, "airlock", endpoint_url=moto_server.endpoint_url))

    local = open_events([tmp_path / "archive"])
    assert run_query(local, "SELECT count(DISTINCT session_id) FROM events")[1] == [(3,)]

    argv = [
        "search",
        f"s3://{bucket}/airlock",
        "--endpoint-url",
        moto_server.endpoint_url,
        "--cache",
        str(tmp_path / "cache"),
        "--type",
        "db.query",
        "--format",
        "json",
    ]
    assert run_cli(argv) == 0
    out, err = capsys.readouterr()
    found = [json.loads(line) for line in out.splitlines()]
    assert [r["text"] for r in found] == ["DROP TABLE t0"], found
    fetched = [line for line in err.splitlines() if line.startswith("airlock: fetched ")]
    assert len(fetched) == 6 and all("/6: " in line for line in fetched)  # a total, each object
    cached = sorted(p.name for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert cached == ["events.jsonl.gz"] * 3 + ["manifest.json"] * 3


def test_athena_ddl_follows_the_layout(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["search", "s3://acme-audit/airlock", "--athena-ddl"]) == 0
    ddl = capsys.readouterr().out
    assert "LOCATION 's3://acme-audit/airlock/'" in ddl
    template = "'s3://acme-audit/airlock/${platform}/${owner}/${repo}/${day}/'"
    assert f"'storage.location.template' = {template}" in ddl
    assert "'projection.day.format' = 'yyyy/MM/dd'" in ddl
    assert "CREATE OR REPLACE VIEW airlock_events AS" in ddl
    with pytest.raises(UsageError):
        athena_ddl("s3://b/p", table="x; DROP TABLE y")


@pytest.mark.service
def test_an_empty_s3_prefix_says_so_and_names_the_prefix(
    tmp_path: Path, moto_server: MotoServer, s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = new_bucket(s3)
    argv = ["search", f"s3://{bucket}/nothing-here", "--endpoint-url", moto_server.endpoint_url]
    assert run_cli([*argv, "--cache", str(tmp_path / "cache")]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert f"no archived sessions found under s3://{bucket}/nothing-here" in err
    assert "cache" not in err.split("hint")[0]


@pytest.mark.parametrize("fmt", ["json", "csv", "table"])
def test_search_into_head_exits_0_quietly(corpus: Path, fmt: str) -> None:
    """`airlock search DIR | head -1`: the closed pipe is the reader's choice, not an error."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with subprocess.Popen(
        [sys.executable, "-m", "airlock._cli", "search", str(corpus), "--format", fmt,
         "--limit", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    ) as search:  # fmt: skip
        assert search.stdout is not None and search.stderr is not None
        first = search.stdout.readline()
        search.stdout.close()  # what `head -1` does once it has its line
        err = search.stderr.read()
        assert search.wait(60) == 0, err
    assert first and err == b""
