"""Fixtures for the archive tests: real sealed sessions, a real moto S3 server, locked buckets."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from tests.support.moto_server import MotoServer, moto_env, moto_server

from airlock.audit import SessionWriter, SigningKey, load_public_keys, load_signing_key
from airlock.events import Identity

__all__ = ["moto_server"]  # re-exported fixture

GITHUB = Identity(
    platform="github",
    repository="acme/api",
    repository_id="123456",
    repository_owner="acme",
    repository_owner_id="7890",
    run_id="9001",
    run_attempt="1",
    sha="0" * 40,
    actor="octocat",
)

SessionFactory = Callable[..., Path]


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in moto_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)


@pytest.fixture(scope="session")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An Ed25519 signing key in a 0600 file."""
    path = tmp_path_factory.mktemp("keys") / "signing-key.pem"
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.write_bytes(pem)
    path.chmod(0o600)
    return path


@pytest.fixture(scope="session")
def signing_key(key_file: Path) -> SigningKey:
    return load_signing_key(key_file)


@pytest.fixture(scope="session")
def trusted(key_file: Path) -> Mapping[str, Ed25519PublicKey]:
    return load_public_keys([key_file])


def write_session(
    root: Path,
    key: SigningKey,
    *,
    identity: Identity = GITHUB,
    events: list[tuple[str, dict[str, Any]]] | None = None,
    session_id: str | None = None,
) -> Path:
    """A sealed session with a start event, the given events (default: a short run), an end."""
    writer = SessionWriter.create(root, session_id)
    writer.append("session.start", {"identity": identity.to_dict()})
    for type_, data in events if events is not None else _default_events():
        writer.append(type_, data)
    writer.append("session.end", {"exit_code": 0})
    writer.seal(key, exit_code=0)
    writer.close()
    return writer.path


def _default_events() -> list[tuple[str, dict[str, Any]]]:
    return [
        ("process.exec", {"pid": 100, "argv": ["psql", "-c", "select 1"]}),
        ("output", {"stream": "stdout", "text": "password=[MASKED:env:DATABASE_PASSWORD]\n"}),
        ("db.query", {"sql": "DROP TABLE users", "gateway": "appdb"}),
        (
            "approval.requested",
            {
                "request_id": "r1",
                "operation": {"kind": "sql", "text": "DROP TABLE users", "rule_id": "no-drop"},
            },
        ),
        ("approval.decided", {"request_id": "r1", "approved": True, "by": "dba", "reason": ""}),
        ("process.exit", {"pid": 100, "exit_code": 0}),
    ]


@pytest.fixture
def make_session(tmp_path: Path, signing_key: SigningKey) -> SessionFactory:
    """Build a sealed session under tmp_path/sessions."""

    def make(**kwargs: Any) -> Path:
        return write_session(tmp_path / "sessions", signing_key, **kwargs)

    return make


@pytest.fixture
def s3(moto_server: MotoServer) -> Any:
    return moto_server.client("s3")


def new_bucket(client: Any, *, locked: bool = True, prefix: str = "audit") -> str:
    """A bucket of its own (a unique name: this module may be imported twice by pytest)."""
    name = f"{prefix}-{uuid.uuid4().hex[:20]}"
    client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=locked)
    return name


@pytest.fixture
def locked_bucket(s3: Any) -> str:
    """A fresh bucket with Object Lock enabled."""
    return new_bucket(s3)


@pytest.fixture
def private_moto() -> Iterator[MotoServer]:
    """A moto server of the test's own, which the test may stop and start."""
    with MotoServer.start() as server:
        yield server
