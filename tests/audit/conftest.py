"""Fixtures for the audit tests: a signing key, and sealed sessions built by SessionWriter."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from airlock.audit import SessionWriter, SigningKey
from airlock.events import EventType

SessionFactory = Callable[..., Path]


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def trusted(key: SigningKey) -> dict[str, Ed25519PublicKey]:
    return {key.key_id: key.public_key}


def write_events(writer: SessionWriter, count: int) -> None:
    """Realistic events of varied sizes (so that tampering with lengths shows up)."""
    for i in range(count):
        if i % 3 == 0:
            writer.append(EventType.PROCESS_EXEC, {"pid": 100 + i, "argv": ["make", f"t{i}"]})
        elif i % 3 == 1:
            writer.append(EventType.OUTPUT, {"stream": "stdout", "text": f"line {i} é ✓\n" * i})
        else:
            writer.append(EventType.PROCESS_EXIT, {"pid": 100 + i, "status": i % 2})


@pytest.fixture
def make_session(tmp_path: Path, key: SigningKey) -> SessionFactory:
    """Build a session of ``count`` events under tmp_path/sessions; seal it unless told not to."""

    def make(
        count: int = 10,
        *,
        seal: bool = True,
        status: str = "complete",
        reason: str | None = None,
    ) -> Path:
        writer = SessionWriter.create(tmp_path / "sessions")
        write_events(writer, count)
        if seal:
            writer.seal(key, exit_code=0, status=status, reason=reason)
        else:
            writer.close()
        return writer.path

    return make
