"""Witnessed checkpoints sealed into the manifest are checked against the chain and the witness."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from airlock.audit import SessionWriter, SigningKey, verify_session
from airlock.audit.checkpoints import checkpoint_message
from airlock.errors import VerificationFailed

Trusted = dict[str, Ed25519PublicKey]


def witness(broker: SigningKey, session_id: str, seq: int, head: str) -> dict[str, Any]:
    """What the broker returns for a checkpoint (its CheckpointRow)."""
    at = round(time.time(), 6)
    sig = broker.sign(checkpoint_message(session_id, seq, head, at))
    return {
        "session_id": session_id,
        "seq": seq,
        "head": head,
        "at": at,
        "key_id": broker.key_id,
        "signature": base64.b64encode(sig).decode(),
    }


def witnessed_session(tmp_path: Path, key: SigningKey, broker: SigningKey) -> Path:
    writer = SessionWriter.create(tmp_path)
    receipts = []
    for i in range(6):
        writer.append("output", {"i": i})
        if i in (2, 4):
            receipts.append(witness(broker, writer.session_id, writer.seq - 1, writer.head))
    writer.seal(key, exit_code=0, checkpoints=receipts)
    return writer.path


def test_witnessed_checkpoints_verify(tmp_path: Path, key: SigningKey, trusted: Trusted) -> None:
    broker = SigningKey.generate()
    session = witnessed_session(tmp_path, key, broker)
    report = verify_session(session, trusted, witnesses={broker.key_id: broker.public_key})
    assert (report.checkpoints_checked, report.warnings) == (2, ())


def test_the_session_key_cannot_vouch_for_a_checkpoint(
    tmp_path: Path, key: SigningKey, trusted: Trusted
) -> None:
    """Checkpoints "witnessed" with the session's own (stealable) key are not witnessed."""
    session = witnessed_session(tmp_path, key, key)
    report = verify_session(session, trusted, witnesses={})
    assert len(report.warnings) == 2
    assert "not trusted" in report.warnings[0]


def test_untrusted_witness_is_a_warning(tmp_path: Path, key: SigningKey, trusted: Trusted) -> None:
    broker = SigningKey.generate()
    report = verify_session(witnessed_session(tmp_path, key, broker), trusted)
    assert report.checkpoints_checked == 2
    assert len(report.warnings) == 2 and "not trusted" in report.warnings[0]


def test_forged_witness_signature_fails(tmp_path: Path, key: SigningKey, trusted: Trusted) -> None:
    """The session key holder rewrites a checkpoint: the broker's signature no longer fits."""
    broker = SigningKey.generate()
    session = witnessed_session(tmp_path, key, broker)
    manifest = json.loads((session / "manifest.json").read_text())
    receipts = manifest["checkpoints"]
    receipts[1]["at"] += 1.0  # any change to what the broker signed
    writer_key_resign(session, key, manifest)
    with pytest.raises(VerificationFailed) as info:
        verify_session(session, trusted, witnesses={broker.key_id: broker.public_key})
    assert (info.value.kind, info.value.line) == ("checkpoint-mismatch", 5)


def test_checkpoint_head_not_in_the_chain_fails(
    tmp_path: Path, key: SigningKey, trusted: Trusted
) -> None:
    broker = SigningKey.generate()
    writer = SessionWriter.create(tmp_path)
    for i in range(4):
        writer.append("output", {"i": i})
    stale = witness(broker, writer.session_id, 1, "ab" * 32)
    writer.seal(key, exit_code=0, checkpoints=[stale])
    with pytest.raises(VerificationFailed) as info:
        verify_session(writer.path, {**trusted, broker.key_id: broker.public_key})
    assert (info.value.kind, info.value.line) == ("checkpoint-mismatch", 2)


def writer_key_resign(session: Path, key: SigningKey, manifest: dict[str, Any]) -> None:
    from airlock.audit._format import canonical_json

    manifest.pop("signatures")
    sig = base64.b64encode(key.sign(canonical_json(manifest))).decode()
    manifest["signatures"] = [{"alg": "Ed25519", "key_id": key.key_id, "sig": sig}]
    (session / "manifest.json").write_text(json.dumps(manifest))
