"""`airlock archive` end to end: S3 going down and coming back, the spool, --delete-local."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from tests.archive.cli import run_cli
from tests.archive.conftest import SessionFactory, new_bucket
from tests.support.moto_server import MotoServer
from tests.support.tcp_relay import TcpRelay

from airlock.archive import fetch_session
from airlock.audit import verify_session
from airlock.errors import ExitCode

pytestmark = pytest.mark.service


def _archive_args(session: Path, bucket: str, server: MotoServer, spool: Path) -> list[str]:
    return [
        "archive",
        str(session),
        "--to",
        f"s3://{bucket}/airlock",
        "--endpoint-url",
        server.endpoint_url,
        "--spool",
        str(spool),
    ]


def _verified_copy(
    receipt_url: str, server: MotoServer, dest: Path, trusted: Mapping[str, Ed25519PublicKey]
) -> int:
    fetched = fetch_session(receipt_url, dest, server.endpoint_url)
    return verify_session(fetched, trusted).event_count


def _session_url(bucket: str, session: Path) -> str:
    return f"s3://{bucket}/airlock/github/acme/api/{_day(session)}/9001/{session.name}/"


def _day(session: Path) -> str:
    return f"{session.name[:4]}/{session.name[4:6]}/{session.name[6:8]}"


def test_s3_down_spools_then_drain_archives_everything(
    make_session: SessionFactory,
    private_moto: MotoServer,
    tmp_path: Path,
    trusted: Mapping[str, Ed25519PublicKey],
    capsys: pytest.CaptureFixture[str],
) -> None:
    sessions = [make_session(), make_session()]
    spool = tmp_path / "spool"
    bucket = new_bucket(private_moto.client("s3"))
    private_moto.stop()

    for session in sessions:
        argv = [*_archive_args(session, bucket, private_moto, spool), "--retry-for", "0.5"]
        assert run_cli(argv) == ExitCode.UNAVAILABLE
    assert sorted(p.name for p in spool.iterdir()) == sorted(s.name for s in sessions)
    assert "drain-spool" in capsys.readouterr().err

    private_moto.launch()
    new_bucket_name = bucket
    private_moto.client("s3").create_bucket(Bucket=new_bucket_name, ObjectLockEnabledForBucket=True)
    assert run_cli(["archive", "--drain-spool", "--spool", str(spool)]) == 0
    drained = [line for line in capsys.readouterr().err.splitlines() if " drained " in line]
    assert [line.split(":")[1] for line in drained] == [" drained 1/2", " drained 2/2"]

    assert list(spool.iterdir()) == []
    for session in sessions:
        assert session.exists()  # no --delete-local: the original stays
        count = _verified_copy(_session_url(bucket, session), private_moto, tmp_path / "f", trusted)
        assert count == len((session / "events.jsonl").read_bytes().splitlines())


def test_s3_coming_back_during_the_retry_window(
    make_session: SessionFactory,
    moto_server: MotoServer,
    tmp_path: Path,
    trusted: Mapping[str, Ed25519PublicKey],
) -> None:
    session = make_session()
    spool = tmp_path / "spool"
    bucket = new_bucket(moto_server.client("s3"))
    port = int(moto_server.endpoint_url.rsplit(":", 1)[1])
    with TcpRelay(port) as relay:  # refused until it opens, then S3 with the bucket, at once
        timer = threading.Timer(1.0, relay.open)
        timer.start()
        try:
            argv = [*_archive_args(session, bucket, moto_server, spool), "--retry-for", "30"]
            argv[argv.index("--endpoint-url") + 1] = relay.url
            assert run_cli(argv) == 0
        finally:
            timer.join()
    assert not any(spool.iterdir())  # the spooled copy went once the archive was verified
    count = _verified_copy(_session_url(bucket, session), moto_server, tmp_path / "f", trusted)
    assert count == 8


def test_delete_local_only_after_verification(
    make_session: SessionFactory,
    moto_server: MotoServer,
    s3: Any,
    tmp_path: Path,
    trusted: Mapping[str, Ed25519PublicKey],
) -> None:
    bucket = new_bucket(s3)
    kept, deleted = make_session(), make_session()
    spool = tmp_path / "spool"
    assert run_cli(_archive_args(kept, bucket, moto_server, spool)) == 0
    assert kept.exists()

    assert run_cli([*_archive_args(deleted, bucket, moto_server, spool), "--delete-local"]) == 0
    assert not deleted.exists()
    count = _verified_copy(_session_url(bucket, deleted), moto_server, tmp_path / "f", trusted)
    assert count == 8


def test_delete_local_keeps_the_copy_when_the_archive_does_not_match(
    make_session: SessionFactory, moto_server: MotoServer, s3: Any, tmp_path: Path
) -> None:
    bucket = new_bucket(s3)
    session = make_session()
    spool = tmp_path / "spool"
    assert run_cli(_archive_args(session, bucket, moto_server, spool)) == 0
    key = _session_url(bucket, session).split("/", 3)[3] + "events.jsonl.gz"
    s3.put_object(Bucket=bucket, Key=key, Body=b"not the log", ChecksumAlgorithm="SHA256")

    argv = [*_archive_args(session, bucket, moto_server, spool), "--delete-local"]
    assert run_cli(argv) == ExitCode.VERIFY_FAILED
    assert (session / "events.jsonl").exists()


def test_cli_refuses_unlocked_bucket_and_unsealed_session(
    make_session: SessionFactory,
    moto_server: MotoServer,
    s3: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    open_bucket = new_bucket(s3, locked=False, prefix="open")
    session = make_session()
    spool = tmp_path / "spool"
    assert run_cli(_archive_args(session, open_bucket, moto_server, spool)) == ExitCode.UNAVAILABLE
    assert "--allow-unlocked" in capsys.readouterr().err

    argv = [*_archive_args(session, open_bucket, moto_server, spool), "--allow-unlocked", "--json"]
    assert run_cli(argv) == 0
    assert '"allow_unlocked": true' in capsys.readouterr().out

    (session / "manifest.json").unlink()
    assert run_cli(_archive_args(session, open_bucket, moto_server, spool)) == ExitCode.USAGE


def test_local_archive_directory_has_the_same_layout(
    make_session: SessionFactory, tmp_path: Path, trusted: Mapping[str, Ed25519PublicKey]
) -> None:
    session = make_session()
    archive = tmp_path / "archive"
    receipt_file = tmp_path / "receipt.json"
    argv = ["archive", str(session.parent), "--to", str(archive), "--receipt", str(receipt_file)]
    assert run_cli(argv) == 0
    assert run_cli(argv) == 0  # idempotent

    session_dir = archive / "github/acme/api" / _day(session) / "9001" / session.name
    visible = sorted(p.name for p in session_dir.iterdir() if not p.name.startswith("."))
    assert visible == ["events.jsonl.gz", "manifest.json"]
    assert '"lock_enabled": false' in receipt_file.read_text()
    fetched = fetch_session(str(session_dir), tmp_path / "fetched")
    assert verify_session(fetched, trusted).status == "complete"


def test_s3_dying_in_the_middle_of_a_multipart_upload(
    make_session: SessionFactory,
    private_moto: MotoServer,
    tmp_path: Path,
    trusted: Mapping[str, Ed25519PublicKey],
) -> None:
    import secrets

    from airlock.archive import ArchiveUnreachable, archive_session
    from airlock.archive.s3 import S3Sink
    from airlock.archive.spool import SpoolRequest, spool_session

    session = make_session(
        events=[("output", {"text": secrets.token_hex(6000)}) for _ in range(1200)]
    )
    bucket = new_bucket(private_moto.client("s3"))
    url = f"s3://{bucket}/airlock"
    sent = 0

    def kill_after_first_part(key: str, size: int) -> Any:
        def advance(amount: int) -> None:
            nonlocal sent
            sent += amount
            if sent >= 5 * 1024 * 1024 and private_moto.running:
                private_moto.stop()

        return advance

    part = 5 * 1024 * 1024
    sink = S3Sink(
        bucket,
        "airlock",
        endpoint_url=private_moto.endpoint_url,
        progress=kill_after_first_part,
        multipart_threshold=part,
        part_size=part,
    )
    with pytest.raises(ArchiveUnreachable):
        archive_session(session, sink)
    assert sent >= part and not private_moto.running

    spool = tmp_path / "spool"
    request = SpoolRequest(url, private_moto.endpoint_url, "compliance", 30, False, str(session))
    spool_session(session, spool, request)
    private_moto.launch()
    private_moto.client("s3").create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    assert run_cli(["archive", "--drain-spool", "--spool", str(spool), "--delete-local"]) == 0

    assert not session.exists() and not any(spool.iterdir())
    fetched = fetch_session(
        _session_url(bucket, session), tmp_path / "f", private_moto.endpoint_url
    )
    assert verify_session(fetched, trusted).event_count == 1202
