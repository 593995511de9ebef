"""Layout, URL parsing, retention dates, backoff, the public API, and the installed CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.archive.conftest import SessionFactory

import airlock.archive
from airlock.archive.archiver import retain_until_for
from airlock.archive.interface import ArchiveUnreachable, LockMode
from airlock.archive.layout import location_for, parse_url
from airlock.archive.spool import with_backoff
from airlock.errors import UsageError
from airlock.events import Identity


def test_public_api_is_pinned() -> None:
    assert sorted(airlock.archive.__all__) == [
        "ArchiveCheckFailed",
        "ArchiveError",
        "ArchiveOptions",
        "ArchiveSink",
        "ArchiveUnlocked",
        "ArchiveUnreachable",
        "LockMode",
        "Receipt",
        "archive_session",
        "fetch_session",
        "make_sink",
    ]


def test_github_and_local_locations(make_session: SessionFactory) -> None:
    github = location_for(make_session())
    assert (github.platform, github.owner, github.repo, github.run) == (
        "github",
        "acme",
        "api",
        "9001",
    )
    local = location_for(make_session(identity=Identity(platform="local", repository="x/y")))
    assert (local.platform, local.owner, local.repo, local.run) == (
        "local",
        "_local",
        "_local",
        "_",
    )
    assert local.key("p/").startswith("p/local/_local/_local/20")
    assert local.key().endswith(f"/_/{local.session_id}/")


@settings(max_examples=200, deadline=None)
@given(repo=st.text(min_size=1, max_size=40), run=st.text(max_size=20), sid=st.text(max_size=30))
def test_hostile_identity_cannot_escape_the_layout(
    tmp_path_factory: pytest.TempPathFactory, repo: str, run: str, sid: str
) -> None:
    session = tmp_path_factory.mktemp("hostile")
    ident = Identity(platform="github", repository=repo, run_id=run or None)
    first = {
        "seq": 0,
        "ts": "2026-11-25T00:00:00Z",
        "type": "session.start",
        "prev": "0" * 64,
        "data": {"identity": ident.to_dict()},
    }
    (session / "events.jsonl").write_text(json.dumps(first) + "\n")
    loc = location_for(session, {"session_id": sid, "started_at": "2026-11-25T00:00:00Z"})
    parts = loc.key().rstrip("/").split("/")
    assert len(parts) == 8
    assert all(p and p not in {".", ".."} for p in parts)
    allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._=+@-")
    assert all(set(p) <= allowed for p in parts)


def test_parse_url() -> None:
    assert parse_url("s3://bucket/a/b/") == ("s3", "bucket", "a/b")
    assert parse_url("s3://bucket") == ("s3", "bucket", "")
    assert parse_url("file:///tmp/x") == ("file", "", "/tmp/x")
    assert parse_url("./archive") == ("file", "", "./archive")
    with pytest.raises(UsageError):
        parse_url("s3:///prefix")
    with pytest.raises(UsageError):
        parse_url("gs://bucket/x")


def test_retention_runs_from_the_seal_with_a_floor() -> None:
    now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    sealed = {"sealed_at": "2026-11-20T10:00:00.123456Z"}
    assert retain_until_for(sealed, 30, now) == datetime(2026, 12, 20, 10, 0, tzinfo=UTC)
    old = {"sealed_at": "2020-01-01T00:00:00Z"}
    assert retain_until_for(old, 30, now) == now + timedelta(days=1)


def test_lock_mode_order() -> None:
    assert LockMode.COMPLIANCE.at_least(LockMode.GOVERNANCE)
    assert LockMode.COMPLIANCE.at_least(LockMode.COMPLIANCE)
    assert not LockMode.GOVERNANCE.at_least(LockMode.COMPLIANCE)


def test_backoff_doubles_and_gives_up() -> None:
    waits: list[float] = []
    calls = 0

    def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 4:
            raise ArchiveUnreachable("down")
        return "ok"

    assert with_backoff(flaky, 60, sleep=waits.append) == "ok"
    assert waits == [0.5, 1.0, 2.0]

    def down() -> str:
        raise ArchiveUnreachable("down")

    with pytest.raises(ArchiveUnreachable):
        with_backoff(down, 0.05, first_delay=0.01)


def test_installed_cli_archives_to_a_directory(
    make_session: SessionFactory, tmp_path: Path
) -> None:
    session = make_session()
    airlock_bin = Path(sys.executable).with_name("airlock")
    cmd = [str(airlock_bin), "archive", str(session), "--to", str(tmp_path / "arch"), "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    (receipt,) = json.loads(done.stdout)
    assert receipt["session_id"] == session.name and receipt["verified"] is True
    unsealed = tmp_path / "sessions" / "broken"
    unsealed.mkdir()
    (unsealed / "events.jsonl").write_text("")
    cmd = [str(airlock_bin), "archive", str(unsealed), "--to", str(tmp_path / "arch")]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert done.returncode == 80
    assert "airlock seal" in done.stderr
