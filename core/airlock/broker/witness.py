"""Check a session log against the checkpoints the broker witnessed while it ran.

A log rewritten after the fact, even re-signed with the (stealable) local key, no longer hashes
to the heads the broker signed at the time: this is what makes in-job logs trustworthy when the
runner itself is not.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from airlock.audit.checkpoints import checkpoint_message
from airlock.audit.reader import line_hashes
from airlock.errors import VerificationFailed

__all__ = ["check_witnessed", "parse_public_keys"]


def parse_public_keys(keys: Sequence[Mapping[str, str]]) -> dict[str, Ed25519PublicKey]:
    """The broker's ``/.well-known/airlock-keys`` entries, by key id."""
    parsed: dict[str, Ed25519PublicKey] = {}
    for entry in keys:
        key = load_pem_public_key(entry["public_pem"].encode())
        if isinstance(key, Ed25519PublicKey):
            parsed[entry["key_id"]] = key
    return parsed


def check_witnessed(
    session_dir: Path,
    session_id: str,
    checkpoints: Sequence[Mapping[str, Any]],
    keys: Mapping[str, Ed25519PublicKey],
    *,
    last_seq: int | None = None,
) -> int:
    """Raise VerificationFailed at the first witnessed head the log does not match; else count.

    ``keys`` are the witness's keys only. A session the broker never saw fails (a missing
    checkpoint is tampering), and so does a log that goes on past its last witnessed line by more
    than the final checkpoint event itself (``last_seq``: the sealed last seq).
    """
    if not checkpoints:
        raise VerificationFailed(
            f"the broker witnessed no checkpoint of session {session_id}",
            kind="unwitnessed",
            hint="the session was not run with --broker, or its id was changed",
        )
    heads = line_hashes(session_dir)
    for checkpoint in sorted(checkpoints, key=lambda c: int(c["seq"])):
        seq, head = int(checkpoint["seq"]), str(checkpoint["head"])
        _check_signature(session_id, checkpoint, keys)
        if seq >= len(heads):
            raise VerificationFailed(
                f"the broker witnessed line {seq + 1}, but the log has {len(heads)} lines",
                kind="truncated",
                line=len(heads) + 1,
            )
        if heads[seq] != head:
            raise VerificationFailed(
                f"line {seq + 1} differs from what the broker witnessed during the session",
                kind="checkpoint-mismatch",
                line=seq + 1,
                hint="the log was rewritten after the broker saw it",
            )
    newest = max(int(c["seq"]) for c in checkpoints)
    if last_seq is not None and last_seq > newest + 1:
        raise VerificationFailed(
            f"lines {newest + 2}-{last_seq + 1} come after the last line the broker witnessed",
            kind="unwitnessed",
            line=newest + 2,
            hint="events were added after the session's last checkpoint",
        )
    return len(checkpoints)


def _check_signature(
    session_id: str, checkpoint: Mapping[str, Any], keys: Mapping[str, Ed25519PublicKey]
) -> None:
    key = keys.get(str(checkpoint["key_id"]))
    if key is None:
        raise VerificationFailed(
            f"checkpoint {checkpoint['seq']} is signed by an unknown broker key",
            kind="untrusted-key",
        )
    message = checkpoint_message(
        session_id, int(checkpoint["seq"]), str(checkpoint["head"]), float(checkpoint["at"])
    )
    try:
        key.verify(base64.b64decode(str(checkpoint["signature"])), message)
    except (InvalidSignature, ValueError) as exc:
        raise VerificationFailed(
            f"the broker's signature on checkpoint {checkpoint['seq']} does not verify",
            kind="checkpoint-mismatch",
        ) from exc
