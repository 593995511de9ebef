"""The archive believes only what it reads back: an S3 look-alike that stores a weaker lock mode
or an earlier retain-until than was asked (both accepted by the store, as moto does) makes the
archive fail, and the local copy stays. These tests fail if `_check_lock` stops comparing the
mode or the date (each was a mutant that all other archive tests let through)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.archive.conftest import SessionFactory
from tests.support.moto_server import MotoServer

from airlock.archive import ArchiveCheckFailed, ArchiveOptions, LockMode, archive_session
from airlock.archive.s3 import S3Sink

pytestmark = pytest.mark.service


class _WeakeningSink(S3Sink):
    """Stores what a misconfigured S3-compatible store would: GOVERNANCE for COMPLIANCE, and/or
    a retain-until a day early, on every write of a lock (upload and retention change)."""

    def __init__(self, *args: Any, weaken_mode: bool, shorten: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.weaken_mode, self.shorten = weaken_mode, shorten

    def _weaken(self, mode: LockMode, until: datetime) -> tuple[LockMode, datetime]:
        mode = LockMode.GOVERNANCE if self.weaken_mode else mode
        return mode, until - timedelta(days=1) if self.shorten else until

    def put(
        self,
        key: str,
        source: Path,
        *,
        mode: LockMode | None,
        retain_until: datetime | None,
        **kw: Any,
    ) -> Any:  # type: ignore[override]
        if mode is not None and retain_until is not None:
            mode, retain_until = self._weaken(mode, retain_until)
        return super().put(key, source, mode=mode, retain_until=retain_until, **kw)

    def extend_retention(self, key: str, mode: LockMode, retain_until: datetime) -> None:
        super().extend_retention(key, *self._weaken(mode, retain_until))


@pytest.mark.parametrize(
    ("weaken_mode", "shorten", "says"),
    [
        (True, False, "is locked in mode GOVERNANCE, COMPLIANCE was asked"),
        (False, True, "is retained until"),
    ],
)
def test_a_weaker_lock_read_back_fails_the_archive(
    make_session: SessionFactory,
    moto_server: MotoServer,
    locked_bucket: str,
    s3: Any,
    weaken_mode: bool,
    shorten: bool,
    says: str,
) -> None:
    session = make_session()
    sink = _WeakeningSink(
        locked_bucket, "airlock", endpoint_url=moto_server.endpoint_url,
        weaken_mode=weaken_mode, shorten=shorten,
    )  # fmt: skip
    with pytest.raises(ArchiveCheckFailed, match=says):
        archive_session(session, sink, ArchiveOptions(mode=LockMode.COMPLIANCE, retention_days=30))
    assert (session / "events.jsonl").is_file()  # the local copy is never given up on a failure
    # what the store really holds is what the error said: the check read it, not our request
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=locked_bucket)["Contents"]]
    head = s3.head_object(Bucket=locked_bucket, Key=keys[0])
    assert head["ObjectLockMode"] == ("GOVERNANCE" if weaken_mode else "COMPLIANCE")


def test_the_same_store_without_the_fault_archives(
    make_session: SessionFactory, moto_server: MotoServer, locked_bucket: str
) -> None:
    sink = _WeakeningSink(
        locked_bucket, "airlock", endpoint_url=moto_server.endpoint_url,
        weaken_mode=False, shorten=False,
    )  # fmt: skip
    receipt = archive_session(make_session(), sink, ArchiveOptions(retention_days=30))
    assert {o.lock_mode for o in receipt.objects} == {"COMPLIANCE"}
