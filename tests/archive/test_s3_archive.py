"""Archive to a real moto S3 server: lock, checksums, retention, tampering, idempotence."""

from __future__ import annotations

import base64
import gzip
import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from tests.archive.conftest import SessionFactory, new_bucket
from tests.support.moto_server import MotoServer

from airlock.archive import (
    ArchiveCheckFailed,
    ArchiveOptions,
    ArchiveUnlocked,
    LockMode,
    archive_session,
    fetch_session,
)
from airlock.archive.s3 import S3Sink, composite_sha256, hash_file
from airlock.audit import verify_session
from airlock.errors import VerificationFailed

pytestmark = pytest.mark.service


def _sink(server: MotoServer, bucket: str, **kwargs: Any) -> S3Sink:
    return S3Sink(bucket, "airlock", endpoint_url=server.endpoint_url, **kwargs)


def _head(s3: Any, bucket: str, key: str) -> dict[str, Any]:
    head: dict[str, Any] = s3.head_object(
        Bucket=bucket, Key=f"airlock/{key}", ChecksumMode="ENABLED"
    )
    return head


def test_objects_land_in_the_layout_with_lock_and_checksums(
    make_session: SessionFactory, moto_server: MotoServer, s3: Any, locked_bucket: str
) -> None:
    session = make_session()
    receipt = archive_session(session, _sink(moto_server, locked_bucket))

    prefix = f"github/acme/api/{receipt.session_id[:4]}/"
    assert all(o.key.startswith(prefix) for o in receipt.objects)
    assert [o.key.rsplit("/", 1)[1] for o in receipt.objects] == [
        "events.jsonl.gz",
        "manifest.json",
    ]
    assert receipt.objects[0].key.split("/")[6:8] == ["9001", session.name]
    for obj in receipt.objects:
        head = _head(s3, locked_bucket, obj.key)
        assert head["ObjectLockMode"] == "COMPLIANCE"
        assert head["ObjectLockRetainUntilDate"] >= datetime.now(UTC) + timedelta(days=364)
        body = s3.get_object(Bucket=locked_bucket, Key=f"airlock/{obj.key}")["Body"].read()
        digest = hashlib.sha256(body).digest()
        assert head["ChecksumSHA256"] == base64.b64encode(digest).decode()
        assert obj.sha256 == digest.hex()
    log = s3.get_object(Bucket=locked_bucket, Key=f"airlock/{receipt.objects[0].key}")["Body"]
    assert gzip.decompress(log.read()) == (session / "events.jsonl").read_bytes()
    assert receipt.verified and receipt.lock_enabled and not receipt.allow_unlocked


def test_rerun_is_idempotent(
    make_session: SessionFactory, moto_server: MotoServer, s3: Any, locked_bucket: str
) -> None:
    session = make_session()
    first = archive_session(session, _sink(moto_server, locked_bucket))
    second = archive_session(session, _sink(moto_server, locked_bucket))

    assert [o.action for o in first.objects] == ["uploaded", "uploaded"]
    assert [o.action for o in second.objects] == ["present", "present"]
    assert [o.version_id for o in first.objects] == [o.version_id for o in second.objects]
    versions = s3.list_object_versions(Bucket=locked_bucket)["Versions"]
    assert len(versions) == 2


def test_deleting_a_locked_version_is_refused(
    make_session: SessionFactory, moto_server: MotoServer, s3: Any, locked_bucket: str
) -> None:
    receipt = archive_session(make_session(), _sink(moto_server, locked_bucket))
    log = receipt.objects[0]

    with pytest.raises(ClientError) as err:
        s3.delete_object(Bucket=locked_bucket, Key=f"airlock/{log.key}", VersionId=log.version_id)
    assert err.value.response["Error"]["Code"] == "AccessDenied"
    assert _head(s3, locked_bucket, log.key)["VersionId"] == log.version_id


def test_retention_is_extended_never_shortened(
    make_session: SessionFactory, moto_server: MotoServer, s3: Any, locked_bucket: str
) -> None:
    session = make_session()
    sink = _sink(moto_server, locked_bucket)
    archive_session(session, sink, ArchiveOptions(retention_days=30))
    longer = archive_session(session, sink, ArchiveOptions(retention_days=90))
    shorter = archive_session(session, sink, ArchiveOptions(retention_days=2))

    assert [o.action for o in longer.objects] == ["retention-extended"] * 2
    assert [o.action for o in shorter.objects] == ["present"] * 2
    for obj in longer.objects:
        until = _head(s3, locked_bucket, obj.key)["ObjectLockRetainUntilDate"]
        assert until >= datetime.now(UTC) + timedelta(days=89)
    assert shorter.objects[0].retain_until == longer.objects[0].retain_until


def test_governance_existing_object_is_upgraded_to_compliance(
    make_session: SessionFactory, moto_server: MotoServer, s3: Any, locked_bucket: str
) -> None:
    session = make_session()
    sink = _sink(moto_server, locked_bucket)
    archive_session(session, sink, ArchiveOptions(mode=LockMode.GOVERNANCE))
    receipt = archive_session(session, sink, ArchiveOptions(mode=LockMode.COMPLIANCE))

    assert [o.action for o in receipt.objects] == ["retention-extended"] * 2
    assert _head(s3, locked_bucket, receipt.objects[0].key)["ObjectLockMode"] == "COMPLIANCE"


def test_unlocked_bucket_is_refused_unless_allowed(
    make_session: SessionFactory, moto_server: MotoServer, s3: Any
) -> None:
    bucket = new_bucket(s3, locked=False, prefix="open")
    session = make_session()
    with pytest.raises(ArchiveUnlocked):
        archive_session(session, _sink(moto_server, bucket))
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0

    receipt = archive_session(
        session, _sink(moto_server, bucket), ArchiveOptions(allow_unlocked=True)
    )
    assert receipt.allow_unlocked and not receipt.lock_enabled and receipt.mode is None
    head = _head(s3, bucket, receipt.objects[0].key)
    assert head["Metadata"]["airlock-unlocked"] == "true"
    assert "ObjectLockMode" not in head


def test_replaced_object_is_detected_by_rerun_and_by_verify(
    make_session: SessionFactory,
    moto_server: MotoServer,
    s3: Any,
    locked_bucket: str,
    tmp_path: Path,
    trusted: Mapping[str, Ed25519PublicKey],
) -> None:
    session = make_session()
    receipt = archive_session(session, _sink(moto_server, locked_bucket))
    log_key = f"airlock/{receipt.objects[0].key}"
    original = gzip.decompress(s3.get_object(Bucket=locked_bucket, Key=log_key)["Body"].read())
    tampered = gzip.compress(original.replace(b"DROP TABLE users", b"SELECT 1 -- nothing"))
    other = moto_server.client("s3")  # a second client, as an attacker with write access
    other.put_object(
        Bucket=locked_bucket,
        Key=log_key,
        Body=tampered,
        ChecksumAlgorithm="SHA256",
        ChecksumSHA256=base64.b64encode(hashlib.sha256(tampered).digest()).decode(),
        ObjectLockMode="GOVERNANCE",
        ObjectLockRetainUntilDate=datetime.now(UTC) + timedelta(days=1),
    )

    with pytest.raises(ArchiveCheckFailed, match="different content"):
        archive_session(session, _sink(moto_server, locked_bucket))
    url = f"s3://{locked_bucket}/airlock/{receipt.objects[0].key.rsplit('/', 1)[0]}/"
    fetched = fetch_session(url, tmp_path / "fetched", moto_server.endpoint_url)
    with pytest.raises(VerificationFailed) as err:
        verify_session(fetched, trusted)
    assert err.value.kind == "modified"


def test_wrong_bytes_with_the_right_checksum_headers_fail_the_read_back(
    make_session: SessionFactory, moto_server: MotoServer, s3: Any, locked_bucket: str
) -> None:
    """moto accepts a wrong checksum on upload: only our read-back hash notices."""
    session = make_session()
    sink = _sink(moto_server, locked_bucket)
    receipt = archive_session(session, sink)
    key = receipt.objects[1].key  # manifest.json
    good = s3.get_object(Bucket=locked_bucket, Key=f"airlock/{key}")["Body"].read()
    bad = good.replace(b'"status"', b'"STATUS"')
    s3.put_object(
        Bucket=locked_bucket,
        Key=f"airlock/{key}",
        Body=bad,
        ChecksumAlgorithm="SHA256",
        ChecksumSHA256=base64.b64encode(hashlib.sha256(good).digest()).decode(),
        Metadata={"airlock-sha256": hashlib.sha256(good).hexdigest()},
        ObjectLockMode="COMPLIANCE",
        ObjectLockRetainUntilDate=datetime.now(UTC) + timedelta(days=400),
    )
    assert (
        _head(s3, locked_bucket, key)["ChecksumSHA256"]
        == base64.b64encode(hashlib.sha256(good).digest()).decode()
    )

    with pytest.raises(ArchiveCheckFailed):
        archive_session(session, sink)


def test_large_log_goes_multipart_with_per_part_checksums(
    make_session: SessionFactory,
    moto_server: MotoServer,
    s3: Any,
    locked_bucket: str,
    tmp_path: Path,
) -> None:
    import secrets

    noise = [("output", {"text": secrets.token_urlsafe(9000)}) for _ in range(1100)]
    session = make_session(events=noise)
    part = 5 * 1024 * 1024
    sink = _sink(moto_server, locked_bucket, multipart_threshold=part, part_size=part)
    receipt = archive_session(session, sink)

    log = receipt.objects[0]
    assert log.size > part
    head = _head(s3, locked_bucket, log.key)
    body = tmp_path / "log.gz"
    body.write_bytes(s3.get_object(Bucket=locked_bucket, Key=f"airlock/{log.key}")["Body"].read())
    parts = hash_file(body, part)
    assert len(parts.part_digests) == 2
    assert (
        head["ChecksumSHA256"].split("-")[0] == composite_sha256(parts.part_digests).split("-")[0]
    )
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert archive_session(session, sink).objects[0].action == "present"


def test_fetch_session_gives_a_verifiable_session(
    make_session: SessionFactory,
    moto_server: MotoServer,
    locked_bucket: str,
    tmp_path: Path,
    trusted: Mapping[str, Ed25519PublicKey],
) -> None:
    session = make_session()
    receipt = archive_session(session, _sink(moto_server, locked_bucket))

    fetched = fetch_session(receipt.url, tmp_path / "fetched", moto_server.endpoint_url)
    report = verify_session(fetched, trusted)
    assert fetched.name == session.name
    assert (fetched / "events.jsonl").read_bytes() == (session / "events.jsonl").read_bytes()
    assert report.status == "complete" and report.event_count == 8
