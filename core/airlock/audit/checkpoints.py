"""Witnessed checkpoints: a third party (the broker) signs a chain head while the session runs.

A checkpoint is ``{"seq", "head", "at", "key_id", "signature"}``: the witness's Ed25519
signature (base64) over :func:`checkpoint_message`. Sealed into the manifest, it proves the log
already held that line when the witness saw it, so rewriting the log later with the session's
own key shows up even when the attacker holds that key.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from airlock.errors import VerificationFailed

__all__ = ["check_witness", "checkpoint_message"]


def checkpoint_message(session_id: str, seq: int, head: str, at: float) -> bytes:
    """The exact bytes a witness signs for the chain head ``head`` of line ``seq``."""
    return f"airlock-checkpoint/1\n{session_id}\n{seq}\n{head}\n{at:.6f}".encode()


def check_witness(
    entry: Mapping[str, Any], session_id: str, trusted: Mapping[str, Ed25519PublicKey]
) -> str | None:
    """Check a checkpoint's witness signature; return a warning when it cannot be checked.

    Raises VerificationFailed (``checkpoint-mismatch``) when a trusted witness's signature does
    not verify. The head itself is checked against the chain by the verifier.
    """
    seq, key_id, sig, at = (entry.get(k) for k in ("seq", "key_id", "signature", "at"))
    if not isinstance(key_id, str) or not isinstance(sig, str) or not isinstance(at, int | float):
        return f"checkpoint at seq {seq} carries no witness signature"
    if key_id not in trusted:
        return (
            f"checkpoint at seq {seq} is witnessed by {key_id}, which is not trusted; "
            "pass the witness's public key with --key-file to check it"
        )
    message = checkpoint_message(session_id, int(seq or 0), str(entry.get("head")), float(at))
    try:
        trusted[key_id].verify(base64.b64decode(sig, validate=True), message)
    except (InvalidSignature, binascii.Error, ValueError) as exc:
        raise VerificationFailed(
            f"line {int(seq or 0) + 1}: the witness signature of the checkpoint at seq {seq} "
            "does not verify",
            kind="checkpoint-mismatch",
            line=int(seq or 0) + 1,
            hint="the checkpoint was edited; compare with the broker's record of this session",
        ) from exc
    return None
