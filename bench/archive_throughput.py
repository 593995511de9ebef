"""Archive throughput: `archive_session` (gzip + Object Lock upload + HEAD + read-back) vs
`aws s3 cp` of the same log to the same moto S3 server, in the same run.

    .venv/bin/python bench/archive_throughput.py [--quick] [--mb N]

Figures are MB of the session log (uncompressed) per second. The baseline uploads the raw
log with no lock, no checksum of ours and no verification; awscli must be on PATH (else the
baseline falls back to boto3 `upload_file`, and says so).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.moto_server import MotoServer, moto_env  # noqa: E402

from airlock.archive import archive_session  # noqa: E402
from airlock.archive.s3 import S3Sink  # noqa: E402
from airlock.audit import SessionWriter, load_signing_key  # noqa: E402
from airlock.events import Identity  # noqa: E402

WORDS = [
    "compiling",
    "linking",
    "testing",
    "ok",
    "warning",
    "error",
    "module",
    "package",
    "request",
    "response",
]


def build_session(root: Path, megabytes: int) -> Path:
    """A sealed session of about ``megabytes`` MB of realistic, partly compressible output."""
    os.environ.setdefault("XDG_CONFIG_HOME", str(root / "xdg"))
    key = load_signing_key()
    writer = SessionWriter.create(root / "sessions")
    writer.append("session.start", {"identity": Identity(platform="local").to_dict()})
    target = megabytes * 1_000_000
    written = 0
    i = 0
    while written < target:
        line = " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(12))
        text = f"[{i}] {line} id={secrets.token_hex(16)}\n" * 8
        writer.append("output", {"stream": "stdout", "text": text})
        written += len(text) + 120
        i += 1
    writer.append("session.end", {"exit_status": 0})
    writer.seal(key, exit_code=0)
    writer.close()
    return writer.path


def time_airlock(session: Path, server: MotoServer, bucket: str) -> float:
    start = time.perf_counter()
    archive_session(session, S3Sink(bucket, "airlock", endpoint_url=server.endpoint_url))
    return time.perf_counter() - start


def time_baseline(log: Path, server: MotoServer, bucket: str) -> tuple[float, str]:
    aws = shutil.which("aws")
    start = time.perf_counter()
    if aws:
        subprocess.run(
            [
                aws,
                "s3",
                "cp",
                str(log),
                f"s3://{bucket}/baseline/events.jsonl",
                "--quiet",
                "--endpoint-url",
                server.endpoint_url,
            ],
            check=True,
            env={**os.environ, **moto_env()},
        )
        return time.perf_counter() - start, "aws s3 cp"
    server.client("s3").upload_file(str(log), bucket, "baseline/events.jsonl")
    return time.perf_counter() - start, "boto3 upload_file (awscli not found)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="30 MB instead of 200 MB")
    parser.add_argument("--mb", type=int, help="log size in MB")
    args = parser.parse_args()
    megabytes = args.mb or (30 if args.quick else 200)
    os.environ.update(moto_env())
    with tempfile.TemporaryDirectory() as tmp, MotoServer.start() as server:
        session = build_session(Path(tmp), megabytes)
        log = session / "events.jsonl"
        size_mb = log.stat().st_size / 1e6
        s3 = server.client("s3")
        s3.create_bucket(Bucket="bench-archive", ObjectLockEnabledForBucket=True)
        base_s, base_name = time_baseline(log, server, "bench-archive")
        ours_s = time_airlock(session, server, "bench-archive")
        again_s = time_airlock(session, server, "bench-archive")
    print(f"log: {size_mb:.1f} MB ({megabytes} MB asked), moto S3 at 127.0.0.1")
    print(f"baseline {base_name}: {base_s:.2f} s = {size_mb / base_s:.1f} MB/s")
    print(
        f"airlock archive (gzip, lock, SHA-256, HEAD + read-back): {ours_s:.2f} s = {size_mb / ours_s:.1f} MB/s"
    )
    print(f"airlock archive re-run (idempotent: HEAD + read-back only): {again_s:.2f} s")
    print(f"ratio airlock/baseline throughput: {base_s / ours_s:.2f}x")


if __name__ == "__main__":
    main()
