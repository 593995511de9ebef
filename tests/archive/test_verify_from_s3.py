"""`airlock verify s3://…` verifies straight from the archive, and notices a swapped object."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.moto_server import MotoServer

AIRLOCK = str(Path(sys.executable).parent / "airlock")


def _airlock(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [AIRLOCK, *args], env=dict(os.environ), capture_output=True, timeout=60, check=False
    )


def test_verify_an_archived_session(
    tmp_path: Path, moto_server: MotoServer, locked_bucket: str, s3: Any
) -> None:
    sessions = tmp_path / "sessions"
    assert _airlock("run", "--sessions", str(sessions), "--", "echo", "archived").returncode == 0
    session = next(sessions.iterdir())
    endpoint = moto_server.endpoint_url
    archived = _airlock(
        "archive", str(session), "--to", f"s3://{locked_bucket}/audit", "--endpoint-url", endpoint
    )
    assert archived.returncode == 0, archived.stderr
    [log_key] = [
        o["Key"]
        for o in s3.list_objects_v2(Bucket=locked_bucket)["Contents"]
        if o["Key"].endswith("events.jsonl.gz")
    ]
    url = f"s3://{locked_bucket}/{log_key.rsplit('/', 1)[0]}/"
    ok = _airlock("verify", "--endpoint-url", endpoint, url)
    assert ok.returncode == 0, ok.stderr
    assert session.name.encode() in ok.stdout

    # Someone with write access to an unlocked copy swaps the log: verify names the break.
    copy = f"copy-{locked_bucket}"[:63]
    s3.create_bucket(Bucket=copy)
    for obj in s3.list_objects_v2(Bucket=locked_bucket)["Contents"]:
        body = s3.get_object(Bucket=locked_bucket, Key=obj["Key"])["Body"].read()
        if obj["Key"].endswith(".gz"):
            body = gzip.compress(gzip.decompress(body).replace(b"archived", b"tampered"))
        s3.put_object(Bucket=copy, Key=obj["Key"], Body=body)
    bad = _airlock(
        "verify", "--endpoint-url", endpoint, f"s3://{copy}/{log_key.rsplit('/', 1)[0]}/"
    )
    assert bad.returncode == 84
    assert b"modified" in bad.stderr
