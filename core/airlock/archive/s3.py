"""S3 sink: Object Lock, SHA-256 checksums, multipart for large logs, HeadObject checks.

Credentials come from the standard boto3 chain (environment, profile, web identity, the
broker-issued ones exported by ``airlock credentials``). The endpoint can be overridden with
``--endpoint-url`` / ``AIRLOCK_S3_ENDPOINT_URL`` (MinIO, moto, a VPC endpoint).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airlock.archive.interface import (
    ArchiveCheckFailed,
    ArchiveError,
    ArchiveSink,
    ArchiveUnreachable,
    LockMode,
    LockStatus,
    StoredObject,
)
from airlock.archive.layout import join_key

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

__all__ = [
    "MULTIPART_CHUNK",
    "MULTIPART_THRESHOLD",
    "FileDigest",
    "S3Sink",
    "b64_of_hex",
    "composite_sha256",
    "hash_file",
]

MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_CHUNK = 16 * 1024 * 1024
_READ = 1024 * 1024
SHA256_META = "airlock-sha256"

Progress = Callable[[int], None]


@dataclass(frozen=True)
class FileDigest:
    """SHA-256 of a whole file plus the per-part digests S3 combines for multipart uploads."""

    sha256: str
    size: int
    part_digests: tuple[bytes, ...]


def hash_file(path: Path, part_size: int = MULTIPART_CHUNK) -> FileDigest:
    """Hash ``path`` once: the whole-file SHA-256 and the SHA-256 of each ``part_size`` part."""
    whole = hashlib.sha256()
    parts: list[bytes] = []
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(part_size):
            whole.update(chunk)
            parts.append(hashlib.sha256(chunk).digest())
            size += len(chunk)
    return FileDigest(whole.hexdigest(), size, tuple(parts))


def composite_sha256(part_digests: tuple[bytes, ...]) -> str:
    """S3's checksum of a multipart object: base64(SHA-256(concat(part digests))) + "-N"."""
    digest = hashlib.sha256(b"".join(part_digests)).digest()
    return f"{base64.b64encode(digest).decode()}-{len(part_digests)}"


def b64_of_hex(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def _connection_errors() -> tuple[type[BaseException], ...]:
    from botocore.exceptions import (
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        ReadTimeoutError,
    )

    return (EndpointConnectionError, ConnectionClosedError, ConnectTimeoutError, ReadTimeoutError)


class S3Sink(ArchiveSink):
    """An S3 bucket (and key prefix) with Object Lock."""

    keeps_checksums = True

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        client: S3Client | None = None,
        progress: Callable[[str, int], Progress | None] | None = None,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        part_size: int = MULTIPART_CHUNK,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self._client = client or _make_client(endpoint_url)
        self.progress = progress
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size

    def _key(self, key: str) -> str:
        return join_key(self.prefix, key)

    def _call(self, what: str, func: Callable[..., Any], **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return func(**kwargs)
        except _connection_errors() as exc:
            raise ArchiveUnreachable(
                f"S3 did not answer ({what} on {self.url}): {type(exc).__name__}"
            ) from exc
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "?")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if isinstance(status, int) and status >= 500:
                raise ArchiveUnreachable(f"S3 failed ({what} on {self.url}): {code}") from exc
            raise ArchiveError(f"S3 refused {what} on {self.url}: {code}") from exc
        except BotoCoreError as exc:
            raise ArchiveError(f"S3 {what} on {self.url} failed: {type(exc).__name__}") from exc

    def lock_status(self) -> LockStatus:
        from botocore.exceptions import ClientError

        try:
            resp = self._client.get_object_lock_configuration(Bucket=self.bucket)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "?")
            if code == "ObjectLockConfigurationNotFoundError":
                return LockStatus(enabled=False, detail="no Object Lock configuration")
            return self._call("GetObjectLockConfiguration", _reraise, exc=exc)  # type: ignore[no-any-return]
        except _connection_errors() as exc:
            return self._call("GetObjectLockConfiguration", _reraise, exc=exc)  # type: ignore[no-any-return]
        config = resp.get("ObjectLockConfiguration", {})
        rule = config.get("Rule", {}).get("DefaultRetention", {})
        return LockStatus(
            enabled=config.get("ObjectLockEnabled") == "Enabled",
            default_mode=rule.get("Mode"),
            default_days=rule.get("Days"),
            detail=f"ObjectLockEnabled={config.get('ObjectLockEnabled')}",
        )

    def head(self, key: str) -> StoredObject | None:
        from botocore.exceptions import ClientError

        try:
            resp = self._client.head_object(
                Bucket=self.bucket, Key=self._key(key), ChecksumMode="ENABLED"
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return None
            return self._call("HeadObject", _reraise, exc=exc)  # type: ignore[no-any-return]
        except _connection_errors() as exc:
            return self._call("HeadObject", _reraise, exc=exc)  # type: ignore[no-any-return]
        return StoredObject(
            key=key,
            size=int(resp.get("ContentLength", 0)),
            sha256=resp.get("Metadata", {}).get(SHA256_META),
            lock_mode=resp.get("ObjectLockMode"),
            retain_until=resp.get("ObjectLockRetainUntilDate"),
            version_id=resp.get("VersionId"),
            checksum_sha256=resp.get("ChecksumSHA256"),
        )

    def put(
        self,
        key: str,
        source: Path,
        *,
        sha256: str,
        mode: LockMode | None,
        retain_until: datetime | None,
        metadata: dict[str, str],
    ) -> StoredObject:
        extra: dict[str, Any] = {
            "ChecksumAlgorithm": "SHA256",
            "Metadata": {**metadata, SHA256_META: sha256},
        }
        if mode is not None and retain_until is not None:
            extra["ObjectLockMode"] = mode.value
            extra["ObjectLockRetainUntilDate"] = retain_until
        size = source.stat().st_size
        if size < self.multipart_threshold:
            self._put_single(key, source, sha256, extra)
        else:
            self._put_multipart(key, source, extra, size)
        stored = self.head(key)
        if stored is None:
            raise ArchiveError(f"{self._key(key)} is missing right after upload to {self.url}")
        return stored

    def _put_single(self, key: str, source: Path, sha256: str, extra: dict[str, Any]) -> None:
        body = source.read_bytes()
        md5 = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()
        self._call(
            "PutObject",
            self._client.put_object,
            Bucket=self.bucket,
            Key=self._key(key),
            Body=body,
            ContentMD5=md5,  # Object Lock puts need Content-MD5 or a checksum; send both
            ChecksumSHA256=b64_of_hex(sha256),
            **extra,
        )

    def _put_multipart(self, key: str, source: Path, extra: dict[str, Any], size: int) -> None:
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(
            multipart_threshold=self.multipart_threshold, multipart_chunksize=self.part_size
        )
        callback = self.progress(key, size) if self.progress else None
        self._call(
            "multipart upload",
            self._client.upload_file,
            Filename=str(source),
            Bucket=self.bucket,
            Key=self._key(key),
            ExtraArgs=extra,
            Config=config,
            Callback=callback,
        )

    def extend_retention(self, key: str, mode: LockMode, retain_until: datetime) -> None:
        self._call(
            "PutObjectRetention",
            self._client.put_object_retention,
            Bucket=self.bucket,
            Key=self._key(key),
            Retention={"Mode": mode.value, "RetainUntilDate": retain_until},
        )

    def read_sha256(self, key: str, version_id: str | None = None) -> str:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key)}
        if version_id:
            kwargs["VersionId"] = version_id
        from botocore.exceptions import FlexibleChecksumError

        resp = self._call("GetObject", self._client.get_object, **kwargs)
        digest = hashlib.sha256()
        body = resp["Body"]
        try:
            while chunk := body.read(_READ):
                digest.update(chunk)
        except _connection_errors() as exc:
            raise ArchiveUnreachable(f"S3 read of {key} broke off: {type(exc).__name__}") from exc
        except FlexibleChecksumError as exc:
            raise ArchiveCheckFailed(
                f"{self.url}/{key}: the bytes read back do not match the archive's own checksum"
            ) from exc
        finally:
            body.close()
        return digest.hexdigest()

    def download(self, key: str, dest: Path) -> None:
        self._call(
            "download",
            self._client.download_file,
            Bucket=self.bucket,
            Key=self._key(key),
            Filename=str(dest),
        )

    def list_keys(self, prefix: str) -> Iterator[str]:
        full = join_key(self.prefix, prefix)
        full = f"{full}/" if full and prefix.endswith("/") else full
        paginator = self._client.get_paginator("list_objects_v2")
        pages = self._call(
            "ListObjectsV2", lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=full))
        )
        cut = len(self.prefix) + 1 if self.prefix else 0
        for page in pages:
            for item in page.get("Contents", []):
                yield item["Key"][cut:]


def _reraise(exc: BaseException) -> Any:
    raise exc


def _make_client(endpoint_url: str | None) -> S3Client:
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=3,
        read_timeout=30,
        retries={"max_attempts": 2, "mode": "standard"},  # our own backoff governs beyond this
        request_checksum_calculation="when_supported",
    )
    try:
        client: S3Client = boto3.client("s3", endpoint_url=endpoint_url, config=config)
    except Exception as exc:  # botocore raises many types for a bad configuration
        raise ArchiveError(f"cannot configure the S3 client: {type(exc).__name__}") from exc
    return client
